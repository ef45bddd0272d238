"""Evaluation scores and object statistics on hand-made label maps whose answers are worked out by hand."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_plantbio_train.evaluation.evaluate import evaluate, evaluate_instances, evaluate_semantic, object_statistics, scores_table, write_object_statistics_csv, write_scores_csv

RATIOS = ("precision", "recall", "f1", "ap")


def _three_squares() -> np.ndarray:
    """Three 6 x 6 objects of equal size, so pixel ratios are ratios of object counts."""
    labels = np.zeros((20, 30), np.uint16)
    labels[2:8, 2:8] = 1
    labels[2:8, 12:18] = 2
    labels[12:18, 2:8] = 3
    return labels


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----- instances ----------------------------------------------------------------------------------------------
def test_perfect_match_with_other_ids_scores_one_everywhere():
    truth = _three_squares()
    pred = np.where(truth > 0, 10 - truth, 0).astype(np.int32)
    scores = evaluate(pred, truth, "instance")
    for suffix in ("50", "75"):
        assert all(scores[f"{name}_{suffix}"] == 1.0 for name in RATIOS)
        assert (scores[f"tp_{suffix}"], scores[f"fp_{suffix}"], scores[f"fn_{suffix}"]) == (3, 0, 0)
    assert scores["mean_matched_iou_50"] == 1.0 and scores["foreground_iou"] == 1.0
    assert (scores["n_pred"], scores["n_true"], scores["count_difference"]) == (3, 3, 0)


def test_the_key_names_are_flat_and_json_friendly():
    truth = _three_squares()
    scores = evaluate_instances(truth, truth)
    assert list(scores) == [
        "precision_50", "recall_50", "f1_50", "ap_50", "tp_50", "fp_50", "fn_50",
        "precision_75", "recall_75", "f1_75", "ap_75", "tp_75", "fp_75", "fn_75",
        "mean_matched_iou_50", "n_pred", "n_true", "count_difference", "foreground_iou"]
    assert all(type(value) in (int, float) for value in scores.values())
    assert json.loads(json.dumps(scores)) == scores


def test_one_missed_object_costs_recall_and_ap_not_precision():
    truth = _three_squares()
    pred = np.where(truth == 2, 0, truth)
    scores = evaluate(pred, truth, "instance")
    for suffix in ("50", "75"):
        assert scores[f"precision_{suffix}"] == 1.0
        assert scores[f"recall_{suffix}"] == pytest.approx(2 / 3)
        assert scores[f"f1_{suffix}"] == pytest.approx(0.8)
        assert scores[f"ap_{suffix}"] == pytest.approx(2 / 3)  # 2 / (2 + 0 + 1)
        assert (scores[f"tp_{suffix}"], scores[f"fp_{suffix}"], scores[f"fn_{suffix}"]) == (2, 0, 1)
    assert scores["count_difference"] == -1
    assert scores["foreground_iou"] == pytest.approx(2 / 3)
    assert scores["mean_matched_iou_50"] == 1.0


def test_a_split_60_40_matches_the_bigger_part_at_50_and_nothing_at_75():
    """One 10 x 10 object cut into 60 and 40 pixels: IoUs 0.6 and 0.4, so only the 60 part matches at 0.5."""
    truth = np.zeros((12, 12), np.uint8)
    truth[1:11, 1:11] = 1
    pred = truth.copy()
    pred[1:11, 7:11] = 2
    scores = evaluate(pred, truth, "instance")
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (1, 1, 0)
    assert (scores["precision_50"], scores["recall_50"]) == (0.5, 1.0)
    assert scores["f1_50"] == pytest.approx(2 / 3)
    assert scores["ap_50"] == pytest.approx(1 / 2)
    assert scores["mean_matched_iou_50"] == pytest.approx(0.6)
    assert (scores["tp_75"], scores["fp_75"], scores["fn_75"]) == (0, 2, 1)
    assert all(scores[f"{name}_75"] == 0.0 for name in RATIOS)
    assert (scores["n_pred"], scores["n_true"], scores["count_difference"]) == (2, 1, 1)
    assert scores["foreground_iou"] == 1.0


def test_an_exact_half_reaches_a_threshold_of_one_half():
    """IoU >= t counts as a match, so of two equal halves (IoU 0.5 each) exactly one is matched."""
    truth = np.zeros((10, 10), np.uint8)
    truth[:, :] = 1
    pred = truth.copy()
    pred[:, 5:] = 2
    scores = evaluate_instances(pred, truth, thresholds=(0.5,))
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (1, 1, 0)
    assert scores["ap_50"] == 0.5 and scores["mean_matched_iou_50"] == 0.5
    assert "tp_75" not in scores


def test_other_thresholds_name_their_keys_and_the_mean_iou_stays_at_one_half():
    truth = _three_squares()
    scores = evaluate_instances(truth, truth, thresholds=(0.9,))
    assert scores["ap_90"] == 1.0 and scores["mean_matched_iou_50"] == 1.0
    with pytest.raises(ValueError, match="round to the same"):
        evaluate_instances(truth, truth, thresholds=(0.5, 0.501))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        evaluate_instances(truth, truth, thresholds=(0.0,))


def test_two_empty_maps_agree_and_one_empty_map_scores_zero():
    empty = np.zeros((8, 8), np.uint8)
    agree = evaluate(empty, empty, "instance")
    assert all(agree[f"{name}_50"] == 1.0 for name in RATIOS) and math.isnan(agree["mean_matched_iou_50"])
    missed = evaluate(empty, _three_squares()[:8, :8], "instance")
    assert missed["ap_50"] == 0.0 and missed["fn_50"] == 1 and missed["count_difference"] == -1


def test_per_slice_matches_each_slice_on_its_own():
    """A 2-slice object that a 2D model labels with a new id in each slice: one object split in two in 3D
    (IoU 0.5 each, one match), but a perfect match slice by slice."""
    truth = np.zeros((2, 10, 10), np.uint8)
    truth[:, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[1][pred[1] > 0] = 2
    whole = evaluate(pred, truth, "instance")
    assert (whole["tp_50"], whole["fp_50"], whole["fn_50"], whole["count_difference"]) == (1, 1, 0, 1)
    sliced = evaluate(pred, truth, "instance", per_slice=True)
    assert (sliced["tp_50"], sliced["fp_50"], sliced["fn_50"]) == (2, 0, 0)
    assert (sliced["n_pred"], sliced["n_true"], sliced["count_difference"]) == (2, 2, 0)
    assert sliced["ap_75"] == 1.0
    # A 2D image is one slice: per_slice changes nothing.
    assert evaluate(pred[0], truth[0], "instance", per_slice=True) == evaluate(pred[0], truth[0], "instance")


# ----- semantic -----------------------------------------------------------------------------------------------
def test_semantic_scores_are_keyed_by_the_label_values():
    """Values 0, 2, 7. Per value: 0: 3 shared of 4 -> IoU 3/4, Dice 6/7; 2: 2 of 4 -> 1/2, 2/3; 7: 3 of 4 ->
    3/4, 6/7. Means over 2 and 7 only; 8 of 10 pixels agree."""
    truth = np.array([[0, 0, 0, 0, 2, 2, 2, 7, 7, 7]], np.uint8)
    pred = np.array([[0, 0, 0, 2, 2, 2, 7, 7, 7, 7]], np.uint8)
    scores = evaluate(pred, truth, "semantic")
    assert scores == pytest.approx({
        "pixel_accuracy": 0.8, "mean_iou": 0.625, "mean_dice": (2 / 3 + 6 / 7) / 2,
        "iou_0": 0.75, "dice_0": 6 / 7, "iou_2": 0.5, "dice_2": 2 / 3, "iou_7": 0.75, "dice_7": 6 / 7})
    assert list(scores)[:3] == ["pixel_accuracy", "mean_iou", "mean_dice"]


def test_a_value_in_one_map_only_scores_zero_and_enters_the_mean():
    truth = np.array([[0, 0, 255, 255]], np.uint8)
    pred = np.array([[0, 3, 255, 255]], np.int32)
    scores = evaluate_semantic(pred, truth)
    assert scores["iou_3"] == 0.0 and scores["dice_3"] == 0.0
    assert scores["iou_255"] == 1.0 and scores["iou_0"] == 0.5
    assert scores["mean_iou"] == 0.5 and scores["mean_dice"] == 0.5
    assert scores["pixel_accuracy"] == 0.75


def test_a_map_without_background_has_no_background_keys():
    full = np.full((4, 4), 255, np.uint8)
    scores = evaluate_semantic(full, full)
    assert scores == {"pixel_accuracy": 1.0, "mean_iou": 1.0, "mean_dice": 1.0, "iou_255": 1.0, "dice_255": 1.0}
    background = np.zeros((4, 4), np.uint8)
    assert evaluate_semantic(background, background)["mean_iou"] == 1.0  # background alone is its own mean


def test_an_instance_map_in_semantic_mode_is_refused():
    many = np.arange(400, dtype=np.int32).reshape(20, 20)
    with pytest.raises(ValueError, match="truth holds 400 distinct values.*instance mode"):
        evaluate(np.zeros_like(many), many, "semantic")


# ----- input checks -------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_input_and_the_problem():
    labels = _three_squares()
    with pytest.raises(ValueError, match=r"prediction shape \(20, 29\) differs from truth shape \(20, 30\)"):
        evaluate(labels[:, :29], labels, "instance")
    with pytest.raises(ValueError, match="prediction has dtype float32; expected integer labels"):
        evaluate(labels.astype(np.float32), labels, "semantic")
    with pytest.raises(ValueError, match=r"truth looks like an RGB\(A\) image"):
        evaluate(np.zeros((40, 40), np.uint8), np.zeros((40, 40, 3), np.uint8), "instance")
    with pytest.raises(ValueError, match="truth has shape .*expected a 2D image"):
        evaluate(np.zeros((2, 2), np.uint8), np.zeros((2, 2, 2, 2), np.uint8), "semantic")
    with pytest.raises(ValueError, match="truth holds negative values"):
        evaluate(labels, -labels.astype(np.int32), "instance")
    with pytest.raises(ValueError, match="mode must be one of semantic, instance"):
        evaluate(labels, labels, "panoptic")


def test_a_thin_stack_is_not_mistaken_for_rgb_and_masks_are_accepted():
    stack = np.zeros((5, 40, 3), np.uint8)  # 5 slices of 40 x 3: too small to be an RGB image
    stack[:, 10:20, 1] = 1
    assert evaluate(stack, stack, "instance")["ap_50"] == 1.0
    mask = stack.astype(bool)
    assert evaluate(mask, stack, "semantic")["iou_1"] == 1.0


# ----- output -------------------------------------------------------------------------------------------------
def test_the_table_lists_every_score_readably():
    truth = _three_squares()
    scores = evaluate(np.where(truth == 2, 0, truth), truth, "instance")
    lines = scores_table(scores).splitlines()
    assert lines[0].split() == ["metric", "value"] and len(lines) == len(scores) + 2
    rows = dict(line.split() for line in lines[2:])
    assert rows["recall_50"] == "0.6667" and rows["count_difference"] == "-1" and rows["tp_75"] == "2"


def test_scores_csv_reads_back(tmp_path):
    truth = _three_squares()
    scores = evaluate(np.where(truth == 2, 0, truth), truth, "instance")
    scores["mean_matched_iou_50"] = math.nan
    path = tmp_path / "out" / "scores.csv"
    write_scores_csv(scores, path)
    rows = _read_csv(path)
    assert [row["metric"] for row in rows] == list(scores)
    back = {row["metric"]: float(row["value"]) for row in rows}
    assert math.isnan(back.pop("mean_matched_iou_50"))
    assert back == {k: v for k, v in scores.items() if k != "mean_matched_iou_50"}
    assert [p.name for p in path.parent.iterdir()] == ["scores.csv"]  # no temporary file left behind


# ----- object statistics --------------------------------------------------------------------------------------
def test_object_statistics_in_3d_with_an_anisotropic_voxel():
    """Voxel 2 x 3 x 10 nm (x, y, z), so 60 nm3. Id 1: a 2 x 2 x 3 box; id 5: an L of 3 voxels in slice 2
    whose centroid is not its box's centre; ids 2 to 4 are absent and get no row."""
    labels = np.zeros((3, 4, 5), np.uint16)
    labels[0:2, 1:3, 1:4] = 1
    labels[2, 0, 0] = labels[2, 1, 0] = labels[2, 1, 1] = 5
    rows = object_statistics(labels, (2.0, 3.0, 10.0))
    assert [row["id"] for row in rows] == [1, 5]
    box, ell = rows
    assert box == pytest.approx({
        "id": 1, "voxels": 12, "volume_nm3": 720.0, "z0": 0, "y0": 1, "x0": 1, "z1": 2, "y1": 3, "x1": 4,
        "centroid_z": 0.5, "centroid_y": 1.5, "centroid_x": 2.0,
        "centroid_z_nm": 5.0, "centroid_y_nm": 4.5, "centroid_x_nm": 4.0})
    assert list(box) == list(ell)
    assert (ell["voxels"], ell["volume_nm3"]) == (3, 180.0)
    assert (ell["z0"], ell["y0"], ell["x0"], ell["z1"], ell["y1"], ell["x1"]) == (2, 0, 0, 3, 2, 2)
    assert (ell["centroid_z"], ell["centroid_y"], ell["centroid_x"]) == pytest.approx((2, 2 / 3, 1 / 3))
    assert (ell["centroid_z_nm"], ell["centroid_y_nm"], ell["centroid_x_nm"]) == pytest.approx((20, 2, 2 / 3))
    assert json.loads(json.dumps(rows)) == rows


def test_object_statistics_in_2d_give_areas_and_no_z():
    labels = np.zeros((4, 5), np.int32)
    labels[0, 0] = labels[1, 0] = labels[1, 1] = 3
    (row,) = object_statistics(labels, (2.0, 3.0, 10.0))
    assert row == pytest.approx({"id": 3, "voxels": 3, "area_nm2": 18.0, "y0": 0, "x0": 0, "y1": 2, "x1": 2,
                                 "centroid_y": 2 / 3, "centroid_x": 1 / 3,
                                 "centroid_y_nm": 2.0, "centroid_x_nm": 2 / 3})


def test_huge_ids_are_measured_like_small_ones():
    small = np.zeros((2, 6, 6), np.uint16)
    small[0, :2, :3], small[1, 3:, 3:] = 1, 2
    huge = small.astype(np.uint64) * np.uint64(10**12)
    as_small, as_huge = object_statistics(small, (1, 1, 1)), object_statistics(huge, (1, 1, 1))
    assert [row["id"] for row in as_huge] == [10**12, 2 * 10**12]
    assert [{**row, "id": 0} for row in as_huge] == [{**row, "id": 0} for row in as_small]


def test_object_statistics_checks_its_inputs():
    assert object_statistics(np.zeros((3, 3), np.uint8), (1, 1, 1)) == []
    with pytest.raises(ValueError, match="voxel_size_nm must be three positive numbers"):
        object_statistics(np.ones((3, 3), np.uint8), (1, 0, 1))
    with pytest.raises(ValueError, match="labels has dtype float64"):
        object_statistics(np.ones((3, 3)), (1, 1, 1))


def test_object_statistics_csv_reads_back(tmp_path):
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[0:2, 1:3, 1:4] = 1
    labels[2, 3, 4] = 2
    rows = object_statistics(labels, (2.0, 3.0, 10.0))
    path = tmp_path / "objects.csv"
    write_object_statistics_csv(rows, path)
    back = _read_csv(path)
    assert list(back[0]) == list(rows[0])
    assert [{k: float(v) for k, v in row.items()} for row in back] == rows
    write_object_statistics_csv([], path)
    assert path.read_text() == "id,voxels\n"
