"""The evaluation dock in a real napari viewer, driven through its public methods on hand-made layers."""

from __future__ import annotations

import csv

import numpy as np
import pytest

EvaluateWidget = pytest.importorskip("napari_plantbio_train._widgets.evaluate_widget").EvaluateWidget


def _objects() -> tuple[np.ndarray, np.ndarray]:
    """(result, truth): a 2-slice stack with three equal 4 x 4 x 2 objects, of which the result misses id 2."""
    truth = np.zeros((2, 12, 20), np.uint16)
    truth[:, 1:5, 1:5] = 1
    truth[:, 1:5, 8:12] = 2
    truth[:, 7:11, 1:5] = 3
    return np.where(truth == 2, 0, truth).astype(np.int32), truth


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Evaluate segmentation")
    return viewer, widget


def test_instance_scores_fill_the_table_and_both_csvs_are_written(dock, tmp_path):
    viewer, widget = dock
    result, truth = _objects()
    result_layer = viewer.add_labels(result, name="result", scale=(40, 5, 4))
    truth_layer = viewer.add_labels(truth, name="truth", scale=(40, 5, 4))
    widget.result_picker.value, widget.truth_picker.value = result_layer, truth_layer
    widget.mode.setCurrentText("instance")
    assert widget.voxel_label.text().endswith("x 4 · y 5 · z 40")

    widget.evaluate_button.click()
    rows = dict(widget.table_rows())
    assert widget.scores is not None and list(rows) == list(widget.scores)
    assert (rows["precision_50"], rows["recall_50"], rows["f1_50"], rows["ap_50"]) == \
           ("1.0000", "0.6667", "0.8000", "0.6667")
    assert (rows["n_pred"], rows["n_true"], rows["count_difference"]) == ("2", "3", "-1")
    assert "'result' against 'truth'" in widget.status.text()

    scores_path = widget.export_scores(tmp_path / "scores.csv")
    assert scores_path == tmp_path / "scores.csv"
    back = {row["metric"]: float(row["value"]) for row in _read_csv(scores_path)}
    assert back["recall_75"] == pytest.approx(2 / 3) and back["fn_75"] == 1.0

    objects_path = widget.export_object_statistics(tmp_path / "objects.csv")
    objects = _read_csv(objects_path)
    assert [int(row["id"]) for row in objects] == [1, 3]
    first = objects[0]
    assert int(first["voxels"]) == 32 and float(first["volume_nm3"]) == 32 * 4 * 5 * 40
    assert (float(first["centroid_z_nm"]), float(first["centroid_y_nm"]), float(first["centroid_x_nm"])) == \
           (0.5 * 40, 2.5 * 5, 2.5 * 4)
    assert "2 objects of 'result'" in widget.status.text()


def test_semantic_mode_keys_the_table_by_label_value(dock):
    viewer, widget = dock
    truth = np.array([[0, 0, 0, 0, 2, 2, 2, 7, 7, 7]], np.uint8).repeat(3, axis=0)
    result = np.array([[0, 0, 0, 2, 2, 2, 7, 7, 7, 7]], np.uint8).repeat(3, axis=0)
    widget.result_picker.value = viewer.add_labels(result, name="classes")
    widget.truth_picker.value = viewer.add_labels(truth, name="painted")
    widget.per_slice.setChecked(True)
    widget.mode.setCurrentText("semantic")
    assert not widget.per_slice.isEnabled()
    widget.evaluate()
    rows = dict(widget.table_rows())
    assert list(rows) == ["pixel_accuracy", "mean_iou", "mean_dice", "iou_0", "dice_0", "iou_2", "dice_2",
                          "iou_7", "dice_7"]
    assert (rows["pixel_accuracy"], rows["mean_iou"], rows["iou_2"]) == ("0.8000", "0.6250", "0.5000")
    assert "(semantic)" in widget.status.text()
    assert widget.voxel_label.text().endswith("x 1 · y 1")


def test_problems_show_in_the_dock_and_the_widget_stays_usable(dock, tmp_path):
    viewer, widget = dock
    assert widget.evaluate() is None
    assert "Pick a result" in widget.status.text()
    assert widget.export_object_statistics(tmp_path / "objects.csv") is None
    assert "Pick a result" in widget.status.text()

    result, truth = _objects()
    result_layer = viewer.add_labels(result, name="result")
    small_truth = viewer.add_labels(truth[:, :10], name="cropped truth")
    widget.result_picker.value, widget.truth_picker.value = result_layer, small_truth
    assert widget.evaluate() is None
    message = widget.status.text()
    assert "prediction shape (2, 12, 20) differs from truth shape (2, 10, 20)" in message
    assert widget.table.rowCount() == 0 and not widget.export_scores_button.isEnabled()
    assert widget.export_scores(tmp_path / "scores.csv") is None and "Evaluate first" in widget.status.text()
    assert not (tmp_path / "scores.csv").exists()

    widget.truth_picker.value = viewer.add_labels(truth, name="truth")
    assert widget.evaluate() is not None
    assert widget.table.rowCount() > 0 and widget.export_scores_button.isEnabled()
    assert widget.export_scores(tmp_path / "scores.csv") == tmp_path / "scores.csv"


def test_a_layer_that_cannot_be_measured_reports_why(dock, tmp_path):
    viewer, widget = dock
    widget.result_picker.value = viewer.add_labels(np.zeros((2, 2, 4, 4), np.uint8), name="4d")
    assert widget.export_object_statistics(tmp_path / "objects.csv") is None
    assert "expected a 2D image" in widget.status.text() and "'4d'" in widget.status.text()
    assert not (tmp_path / "objects.csv").exists()
