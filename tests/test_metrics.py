import math

import numpy as np
import pytest

from napari_plantbio_train.evaluation.metrics import foreground_iou, match_instances, match_instances_per_slice, semantic_scores


def _three_objects() -> np.ndarray:
    labels = np.zeros((20, 30), np.uint32)
    labels[2:8, 2:8] = 1
    labels[2:8, 12:18] = 2
    labels[12:18, 2:28] = 3
    return labels


def test_perfect_match_with_different_ids():
    truth = _three_objects()
    pred = np.where(truth > 0, truth + 100, 0)
    scores = match_instances(pred, truth)
    assert scores["tp"] == 3 and scores["fp"] == 0 and scores["fn"] == 0
    assert scores["f1"] == 1.0 and scores["mean_matched_iou"] == 1.0
    assert scores["n_pred"] == 3 and scores["n_true"] == 3


def test_one_missed_object():
    truth = _three_objects()
    pred = np.where(truth == 2, 0, truth)
    scores = match_instances(pred, truth)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 0, 1)
    assert scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(0.8)


def test_split_object_unequal_halves():
    truth = np.zeros((10, 10), np.int32)
    truth[:, :] = 1
    pred = np.zeros_like(truth)
    pred[:, :6] = 1  # IoU 0.6: matches
    pred[:, 6:] = 2  # IoU 0.4: false positive
    scores = match_instances(pred, truth, iou_threshold=0.5)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 0)
    assert scores["mean_matched_iou"] == pytest.approx(0.6)


def test_split_object_equal_halves_matches_only_one():
    truth = np.ones((10, 10), np.int32)
    pred = np.zeros_like(truth)
    pred[:, :5] = 1
    pred[:, 5:] = 2  # both halves have IoU exactly 0.5, but only one may match
    scores = match_instances(pred, truth, iou_threshold=0.5)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 0)
    strict = match_instances(pred, truth, iou_threshold=0.75)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (0, 2, 1)


def test_empty_cases():
    empty, objects = np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32)
    objects[2:5, 2:5] = 4
    assert match_instances(empty, empty)["f1"] == 1.0
    missed = match_instances(empty, objects)
    assert missed["f1"] == 0.0 and missed["fn"] == 1 and math.isnan(missed["mean_matched_iou"])
    assert match_instances(objects, empty)["f1"] == 0.0
    assert foreground_iou(empty, empty) == 1.0
    assert foreground_iou(empty, objects) == 0.0


def test_per_slice_matching_sums_counts():
    truth = np.zeros((2, 10, 10), np.int32)
    truth[:, 2:8, 2:8] = 1  # one object through both slices
    pred = truth.copy()
    pred[1] = 0  # missed in the second slice
    scores = match_instances_per_slice(pred, truth)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 1)
    assert scores["recall"] == 0.5
    assert match_instances_per_slice(np.zeros_like(truth), np.zeros_like(truth))["f1"] == 1.0


def test_foreground_iou():
    truth = np.zeros((4, 4), np.int32)
    truth[:2] = 1
    pred = np.zeros_like(truth)
    pred[1:3] = 7
    assert foreground_iou(pred, truth) == pytest.approx(4 / 12)


def test_semantic_scores_known_values():
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 0]])
    scores = semantic_scores(pred, truth, n_classes=3)
    # class 0: pred 4 px, truth 4 px, both 3 -> IoU 3/5, Dice 6/8
    assert scores["iou_0"] == pytest.approx(3 / 5) and scores["dice_0"] == pytest.approx(6 / 8)
    # class 1: pred 4 px, truth 4 px, both 3 -> IoU 3/5
    assert scores["iou_1"] == pytest.approx(3 / 5) and scores["dice_1"] == pytest.approx(6 / 8)
    # class 2 absent from both: undefined and left out of the mean
    assert math.isnan(scores["iou_2"]) and math.isnan(scores["dice_2"])
    assert scores["mean_iou"] == pytest.approx(3 / 5)


def test_semantic_scores_missed_class_counts_in_mean():
    truth = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 1, 1, 1]])
    scores = semantic_scores(pred, truth, n_classes=3)
    assert scores["iou_1"] == pytest.approx(0.5) and scores["iou_2"] == 0.0
    assert math.isnan(scores["iou_0"])
    assert scores["mean_iou"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="outside"):
        semantic_scores(pred, truth, n_classes=2)
