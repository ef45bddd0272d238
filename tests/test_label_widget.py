"""The auto-label dock in a real napari viewer, driven through its public methods, with tiny models trained once.

Two 20-iteration, 4-channel models (a 3D instance model of chloroplasts and a 2D semantic model of the plate,
class values 0 and 3) are trained once for the module; each labelling run takes well under a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari.layers import Labels

from napari_plantbio_train.job.config import ConfigError
from napari_plantbio_train.job.events import LabelProgress
from napari_plantbio_train.inference.label import LabelSettings
from napari_plantbio_train.job.kinds import POSTPROCESS_DEFAULTS

AutoLabelWidget = pytest.importorskip("napari_plantbio_train._widgets.label_widget").AutoLabelWidget

REPO = Path(__file__).resolve().parents[1]
TINY = dict(base_channels=4, depth=2, iterations=20, validate_every=20, iteration_save=20, batch_size=2, lr=3e-3)
JOB_TIMEOUT_MS = 60_000  # a generous ceiling for sub-second jobs on a busy machine, not a speed claim
SCALE, TRANSLATE = (50.0, 5.0, 5.0), (100.0, -20.0, 30.0)  # the chloroplast model's voxel size (x, y, z 5/5/50)


@pytest.fixture
def trained(tiny_models) -> Path:
    return tiny_models


@pytest.fixture
def dock(make_napari_viewer, trained):
    viewer = make_napari_viewer()
    widget = AutoLabelWidget(viewer, models_dir=trained)
    viewer.window.add_dock_widget(widget, name="Auto-label with a model")
    return viewer, widget


def _label(qtbot, widget):
    assert widget.start(), widget.status.text()
    assert widget.running and not widget.label_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.label_button.isEnabled() and not widget.cancel_button.isEnabled()
    return widget.result


# ----- the manifest and the model list ------------------------------------------------------------------------
def test_manifest_builds_the_widget(make_napari_viewer, npe2pm, models_dir):
    with npe2pm.tmp_plugin(manifest=str(REPO / "napari.yaml")):
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-plantbio-train", "Auto-label with a model")
    assert isinstance(widget, AutoLabelWidget)
    assert widget.models_dir == models_dir and models_dir.is_dir(), "the default folder is created"
    assert widget.model_names() == [] and "No trained model" in widget.status.text()
    assert not widget.start() and "Pick an Image layer" in widget.status.text()


def test_models_are_listed_and_new_ones_appear(make_napari_viewer, trained, tmp_path, qtbot, monkeypatch):
    monkeypatch.setattr(AutoLabelWidget, "POLL_MS", 100)
    models = tmp_path / "models"
    for name in ("chl", "plate"):
        shutil.copytree(trained / name, models / name)
    viewer = make_napari_viewer()
    widget = AutoLabelWidget(viewer, models_dir=models)
    viewer.window.add_dock_widget(widget)
    assert widget.model_names() == ["chl", "plate"]
    text = widget.model_box.itemText(0)
    assert text.startswith("chl — instance, 3d, voxel x/y/z 5/5/50 nm, 20 iterations, best F1@0.5 ")
    assert widget.model_box.itemText(1).startswith("plate — semantic, 2d, voxel x/y/z 1/1/1 nm, 20 iterations, "
                                                   "best mean IoU ")

    widget.select_model("plate")
    shown = {key for key, box in widget.post_boxes.items() if not box.isHidden()}
    assert shown == {"min_confidence"}, "a semantic model has no watershed settings, only its confidence floor"
    saved = {**POSTPROCESS_DEFAULTS, **(widget.record.postprocess or {})}
    assert widget.post_boxes["min_confidence"].value() == pytest.approx(saved["min_confidence"], abs=1e-3)
    (models / "half-written").mkdir()  # a job before its first checkpoint: not a model yet
    (models / "damaged").mkdir()
    shutil.copy(trained / "chl" / "config.json", models / "damaged")
    (models / "damaged" / "model.json").write_text(json.dumps({"format": 1}))
    shutil.copytree(trained / "chl", models / "chl-copy")
    qtbot.waitUntil(lambda: "chl-copy" in widget.model_names(), timeout=5_000)  # seen by the folder poll
    assert widget.model_names() == ["chl", "chl-copy", "plate"]
    assert widget.record.name == "plate", "a refresh keeps the pick"
    shutil.rmtree(models / "plate")
    assert widget.refresh_models() == ["chl", "chl-copy"]
    with pytest.raises(ValueError, match="no model named 'plate'"):
        widget.select_model("plate")


def test_a_picked_model_fills_the_settings(dock, trained):
    _, widget = dock
    widget.select_model("chl")
    record = widget.record
    saved = {**POSTPROCESS_DEFAULTS, **(record.postprocess or {})}
    assert not any(box.isHidden() for box in widget.post_boxes.values())
    for key, box in widget.post_boxes.items():
        assert box.value() == pytest.approx(saved[key], abs=1e-3)
    settings = widget.settings()
    assert (settings.overlap, settings.tta, settings.batch_size) == (LabelSettings.overlap, 0, record.config.batch_size)
    assert settings.postprocess == {}, "untouched fields leave the model's exact values to the engine"
    widget.post_boxes["fg_threshold"].setValue(0.3)
    widget.post_boxes["min_size"].setValue(10)
    widget.tta.setCurrentIndex(2)
    widget.overlap.setValue(0.25)
    widget.batch_size.setValue(5)
    settings = widget.settings()
    assert settings.postprocess == {"fg_threshold": 0.3, "min_size": 10.0}
    assert (settings.overlap, settings.tta, settings.batch_size) == (0.25, 8, 5)
    assert settings.problems(record.window) == []


# ----- labelling ----------------------------------------------------------------------------------------------
def test_instance_model_labels_the_stack_where_the_image_lies(dock, qtbot, chloroplast_crop):
    viewer, widget = dock
    image, _ = chloroplast_crop
    raw = viewer.add_image(image, name="raw", scale=SCALE, translate=TRANSLATE)
    widget.select_model("chl")
    assert widget.warning.text() == "", "the image's scale matches the model's voxel size"
    result = _label(qtbot, widget)
    assert widget.error is None and result.labels is not None
    assert [layer.name for layer in viewer.layers] == ["raw", "raw [chl]"]
    labels = viewer.layers["raw [chl]"]
    assert isinstance(labels, Labels)
    assert labels.data.shape == image.shape and labels.data.dtype == np.uint32
    np.testing.assert_allclose(labels.scale, raw.scale)
    np.testing.assert_allclose(labels.translate, raw.translate)
    ids = np.unique(labels.data)
    assert np.array_equal(ids, np.arange(ids.size)) and result.objects == ids.size - 1
    assert "Added 'raw [chl]'" in widget.status.text()
    assert widget.progress.value() == widget.progress.maximum() > 1

    # Watershed settings changed in the dock reach the engine: a foreground threshold at its top leaves nothing
    # (whatever a 20-iteration model predicts; lower thresholds gave 1 object or 16 as its weights changed).
    widget.post_boxes["fg_threshold"].setValue(widget.post_boxes["fg_threshold"].maximum())
    found = _label(qtbot, widget)
    assert found.objects == 0 < result.objects and viewer.layers[-1].name == "raw [chl] [1]"
    assert viewer.layers[-1].data.max() == 0


def test_semantic_model_gives_its_class_values_and_maps(dock, qtbot, plate_crop):
    viewer, widget = dock
    image, _ = plate_crop
    viewer.add_image(image, name="plate", scale=(8.0, 8.0), translate=(10.0, 20.0))
    widget.select_model("plate")
    assert "trained without a voxel size" in widget.warning.text()
    widget.show_maps.setChecked(True)
    _label(qtbot, widget)
    assert widget.error is None
    names = [layer.name for layer in viewer.layers]
    assert names == ["plate", "plate [plate] class 0", "plate [plate] class 3", "plate [plate]"]
    labels = viewer.layers["plate [plate]"]
    assert labels.data.shape == image.shape and set(np.unique(labels.data)) <= {0, 3}
    for name, visible in (("class 0", False), ("class 3", True)):
        layer = viewer.layers[f"plate [plate] {name}"]
        assert layer.data.shape == image.shape and layer.visible == visible
        np.testing.assert_allclose(layer.translate, (10.0, 20.0))
    total = viewer.layers["plate [plate] class 0"].data + viewer.layers["plate [plate] class 3"].data
    np.testing.assert_allclose(total, 1.0, atol=1e-5)  # softmax over the classes


def test_probability_maps_of_an_instance_model(dock, qtbot, chloroplast_crop):
    viewer, widget = dock
    image, _ = chloroplast_crop
    raw = viewer.add_image(image, name="raw", scale=SCALE, translate=TRANSLATE)
    widget.select_model("chl")
    widget.show_maps.setChecked(True)
    _label(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["raw", "raw [chl] foreground", "raw [chl] contour",
                                                       "raw [chl]"]
    for name, colormap in (("foreground", "magenta"), ("contour", "green")):
        layer = viewer.layers[f"raw [chl] {name}"]
        assert layer.data.shape == image.shape and layer.blending == "additive"
        assert layer.colormap.name == colormap
        assert 0.0 <= float(layer.data.min()) and float(layer.data.max()) <= 1.0
        np.testing.assert_allclose(layer.scale, raw.scale)
        np.testing.assert_allclose(layer.translate, raw.translate)


def test_dask_and_multiscale_images_are_labelled_like_numpy(dock, qtbot, chloroplast_crop):
    da = pytest.importorskip("dask.array")
    viewer, widget = dock
    image, _ = chloroplast_crop
    viewer.add_image(image, name="numpy")
    lazy = viewer.add_image(da.from_array(image, chunks=(1, 96, 96)), name="lazy")
    assert isinstance(lazy.data, da.Array)
    pyramid = viewer.add_image([image, image[:, ::2, ::2]], multiscale=True, name="pyramid", scale=SCALE)
    widget.select_model("chl")
    for layer in (viewer.layers["numpy"], lazy, pyramid):
        widget.image_picker.value = layer
        _label(qtbot, widget)
        assert widget.error is None, widget.error
    expected = viewer.layers["numpy [chl]"].data
    np.testing.assert_array_equal(viewer.layers["lazy [chl]"].data, expected)
    np.testing.assert_array_equal(viewer.layers["pyramid [chl]"].data, expected)  # labelled at full resolution
    np.testing.assert_allclose(viewer.layers["pyramid [chl]"].scale, SCALE)


def test_a_3d_model_on_a_2d_image_says_why_in_the_dock(dock, qtbot, plate_crop):
    viewer, widget = dock
    viewer.add_image(plate_crop[0], name="slice")
    widget.select_model("chl")
    _label(qtbot, widget)
    assert isinstance(widget.error, ConfigError) and widget.result is None
    assert "3D model" in widget.status.text() and "use a 2D model" in widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["slice"]
    assert widget.progress.format() == "failed"


def test_voxel_size_warning_follows_the_picked_layer(dock):
    viewer, widget = dock
    widget.select_model("chl")
    viewer.add_image(np.zeros((2, 8, 8), np.uint8), name="unknown")
    assert "no voxel size" in widget.warning.text() and "⚠" not in widget.warning.text()
    coarse = viewer.add_image(np.zeros((2, 8, 8), np.uint8), name="coarse", scale=(40.0, 5.2, 10.0))
    widget.image_picker.value = coarse
    assert "⚠" in widget.warning.text() and "along x, z" in widget.warning.text()  # y is within 10%
    coarse.scale = SCALE  # fixed in the layer controls: seen at the next look (the folder poll) or check
    assert widget.check_voxel_size() == "" and widget.warning.text() == ""


# ----- cancelling ---------------------------------------------------------------------------------------------
def _start_long_job(dock, qtbot, chloroplast_crop):
    """Label a tiled 8 x 768 x 768 stack (thousands of windows) and wait until windows are done."""
    viewer, widget = dock
    big = np.tile(chloroplast_crop[0], (2, 4, 4))
    raw = viewer.add_image(big, name="big", scale=SCALE)
    widget.select_model("chl")
    assert widget.start()
    qtbot.waitUntil(lambda: isinstance(widget.last_event, LabelProgress) and widget.last_event.windows_done > 0,
                    timeout=JOB_TIMEOUT_MS)
    assert widget.last_event.windows_done < widget.last_event.windows
    return viewer, widget, raw


@pytest.mark.parametrize("how", ["button", "remove layer", "close dock"])
def test_cancel_mid_way_adds_nothing_and_the_dock_works_again(dock, qtbot, chloroplast_crop, how):
    viewer, widget, raw = _start_long_job(dock, qtbot, chloroplast_crop)
    if how == "button":
        widget.cancel_button.click()
    elif how == "remove layer":
        viewer.layers.remove(raw)
        assert "'big' was removed" in widget.status.text()
    else:
        viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None and widget.result is not None and widget.result.labels is None
    assert widget.last_event.cancelled and "Cancelled" in widget.status.text()
    assert [layer.name for layer in viewer.layers] == (["big"] if how != "remove layer" else [])
    assert widget.label_button.isEnabled() and not widget.cancel_button.isEnabled()

    small = viewer.add_image(chloroplast_crop[0], name="small")
    widget.image_picker.value = small
    _label(qtbot, widget)
    assert "small [chl]" in [layer.name for layer in viewer.layers]


def test_closing_the_viewer_cancels_the_job(dock, qtbot, chloroplast_crop):
    viewer, widget, _ = _start_long_job(dock, qtbot, chloroplast_crop)
    worker = widget.worker
    viewer.close()
    assert worker.stop_event.is_set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=JOB_TIMEOUT_MS)


def test_export_and_import_buttons_share_a_model(make_napari_viewer, trained, tmp_path):
    """Export the picked model as a package, import it into another dock's folder: it is listed there."""
    pytest.importorskip("bioimageio.spec")
    source = AutoLabelWidget(make_napari_viewer(), models_dir=trained)
    source.select_model("chl")
    package = source.sharing.export_to(tmp_path / "chl.zip")
    assert package is not None and package.is_file(), source.status.text()

    colleague = AutoLabelWidget(make_napari_viewer(), models_dir=tmp_path / "theirs")
    assert colleague.model_names() == []
    assert colleague.sharing.import_from(package) == "chl"
    assert colleague.model_names() == ["chl"] and "Imported" in colleague.status.text()
    assert colleague.sharing.import_from(package) is None  # the name is taken now: said, not raised
    assert "Import failed" in colleague.status.text()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert colleague.sharing.import_from(tmp_path / "junk.zip") is None
    assert colleague.model_names() == ["chl"]


def test_uncertainty_layer_and_the_next_uncertain_object(dock, qtbot, chloroplast_crop):
    viewer, widget = dock
    image, _ = chloroplast_crop
    viewer.add_image(image, name="raw", scale=SCALE, translate=TRANSLATE)
    widget.select_model("chl")
    for key, value in (("fg_threshold", 0.3), ("seed_threshold", 0.0), ("min_size", 1)):
        widget.post_boxes[key].setValue(value)  # a 20-iteration model needs low thresholds to find objects
    widget.show_doubt.setChecked(True)
    result = _label(qtbot, widget)
    doubt = viewer.layers["raw [chl] uncertainty"]
    assert doubt.data.shape == image.shape and 0 <= doubt.data.min() and doubt.data.max() <= 1
    np.testing.assert_allclose(doubt.scale, SCALE)
    queue = widget.proofread
    labels = viewer.layers["raw [chl]"]
    assert result.objects > 0 and queue.next_button.isEnabled()
    assert result.queue, "the child wrote the proofreading queue beside the uncertainty"
    assert [e.id for e in queue.entries] == [e.id for e in result.queue]
    scores = [e.score for e in result.queue]
    assert scores == sorted(scores, reverse=True), "likeliest error first"
    first = queue.next()
    assert labels.selected_label == first.id
    expected = np.asarray(first.centroid) * labels.scale + labels.translate
    np.testing.assert_allclose(viewer.camera.center[-2:], expected[-2:], atol=1e-6)
    assert queue.next().id == queue.entries[1 % len(queue.entries)].id
