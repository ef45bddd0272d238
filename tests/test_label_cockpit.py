"""The auto-label dock's cockpit in a real napari viewer: many stacks in one job (layers in, layers out; a folder
in, files out) and the models view (curves of ticked models, delete refused in use, rename), with the tiny
models trained once for the session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from napari.layers import Labels

from napari_plantbio_train.models.lock import FolderLock

AutoLabelWidget = pytest.importorskip("napari_plantbio_train._widgets.label_widget").AutoLabelWidget

JOB_TIMEOUT_MS = 120_000  # three child-process stacks on a busy machine, not a speed claim


@pytest.fixture
def dock(make_napari_viewer, tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)  # the models view renames and deletes
    viewer = make_napari_viewer()
    widget = AutoLabelWidget(viewer, models_dir=models)
    viewer.window.add_dock_widget(widget, name="Auto-label with a model")
    return viewer, widget


def _wait(qtbot, widget) -> None:
    assert widget.running and not widget.many.label_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None, widget.status.text()
    assert widget.many.label_button.isEnabled() and widget.state.state.value == "done"


def test_three_image_layers_in_one_job_give_three_labels_layers(qtbot, dock, plate_crop):
    viewer, widget = dock
    image = plate_crop[0]
    layers = [viewer.add_image(image[:96, :96], name="a", scale=(2.0, 2.0)),
              viewer.add_image(image[96:, 96:], name="b", translate=(10.0, 0.0)),
              viewer.add_image(image[:128, 64:], name="c")]
    assert [layer.name for layer in widget.many.layers.choices] == ["a", "b", "c"], "the picker follows the viewer"
    widget.select_model("plate")
    assert not widget.start_many() and "pick the image layers" in widget.status.text()
    widget.many.pick(layers)
    assert widget.start_many(), widget.status.text()
    assert widget.models_in_use() == {"plate"}
    _wait(qtbot, widget)
    results = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert [layer.name for layer in results] == ["a [plate]", "b [plate]", "c [plate]"]
    for source, result in zip(layers, results):
        assert result.data.shape == source.data.shape
        np.testing.assert_array_equal(result.scale, source.scale)
        np.testing.assert_array_equal(result.translate, source.translate)
        assert set(np.unique(np.asarray(result.data))) <= {0, 3}, "the model's own class values"
    assert widget.many.overall.value() == widget.many.overall.maximum(), "the whole job's bar is full"
    assert "Added 3 labels layer(s)" in widget.status.text()


def test_a_folder_of_stacks_is_labelled_into_files_beside_them(qtbot, dock, plate_crop, tmp_path):
    _, widget = dock
    folder = tmp_path / "stacks"
    folder.mkdir()
    for name, part in (("one", plate_crop[0][:96]), ("two", plate_crop[0][96:])):
        tifffile.imwrite(folder / f"{name}.tif", part)
    widget.select_model("plate")
    widget.many.source.setCurrentText("the stacks of a folder")
    widget.many.folder.setText(str(folder))
    assert widget.start_many(), widget.status.text()
    _wait(qtbot, widget)
    written = sorted(p.name for p in folder.glob("*_labels.tif"))
    assert written == ["one_labels.tif", "two_labels.tif"]
    assert tifffile.imread(folder / "two_labels.tif").shape == plate_crop[0][96:].shape
    assert f"Wrote 2 result(s) into {folder}" in widget.status.text()
    # Again: the results are not taken for stacks, and they are not replaced unless asked.
    assert widget.many.folder_stacks() == [str(folder / "one.tif"), str(folder / "two.tif")]
    assert widget.start_many()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is not None and "exists" in widget.status.text()


def test_models_view_plots_ticked_curves_refuses_a_model_in_use_and_renames(qtbot, dock):
    _, widget = dock
    view = widget.models_view
    assert view.names() == ["chl", "plate"]
    assert view.plot() == {} and view.axes.texts, "nothing ticked: a note, not empty axes"
    view.tick("chl")
    view.tick("plate")
    drawn = view.plot()
    assert sorted(drawn) == ["chl", "plate"] and all(drawn.values())
    assert [line.get_label() for line in view.axes.get_lines()] == ["chl", "plate"]
    asked: list[str] = []
    view.confirm = lambda title, question: asked.append(question) or True
    with FolderLock(widget.models_dir, "chl"):  # a training job writing it
        assert not view.delete("chl")
    assert "being written by a running job" in view.status.text() and (widget.models_dir / "chl").is_dir()
    view.confirm = lambda title, question: False
    assert not view.delete("plate") and (widget.models_dir / "plate").is_dir(), "a no keeps the model"
    view.confirm = lambda title, question: True
    assert view.rename("plate", "sieve-plate")
    assert view.names() == ["chl", "sieve-plate"] and widget.model_names() == ["chl", "sieve-plate"]
    assert "Renamed 'plate' to 'sieve-plate'" in view.status.text()
    assert view.delete("sieve-plate") and widget.model_names() == ["chl"]
    assert not Path(widget.models_dir / "sieve-plate").exists()


def test_models_view_refuses_the_model_the_docks_job_uses(qtbot, dock, plate_crop):
    viewer, widget = dock
    viewer.add_image(plate_crop[0], name="plate image")
    widget.select_model("plate")
    widget.models_view.confirm = lambda title, question: True
    assert widget.start()
    assert not widget.models_view.delete("plate") and "a job of this dock is using it" in \
        widget.models_view.status.text()
    assert not widget.models_view.rename("plate", "other")
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert (widget.models_dir / "plate").is_dir()
