"""The docks share one models folder and remember it; a model made in a folder set in one dock is listed in
another."""

from __future__ import annotations

import shutil

from napari_plantbio_train._widgets.label_widget import AutoLabelWidget
from napari_plantbio_train._widgets.settings import DockSettings, shared_settings
from napari_plantbio_train._widgets.train_widget import TrainWidget


def test_a_folder_set_in_the_train_dock_is_the_label_docks(make_napari_viewer, tiny_models, tmp_path, models_dir):
    viewer = make_napari_viewer()
    trainer, labeller = TrainWidget(viewer), AutoLabelWidget(viewer)
    assert labeller.models_dir == models_dir and labeller.model_names() == []
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_models / "chl", elsewhere / "chl")  # a model made in that folder
    trainer.form.models_dir.setText(str(elsewhere))
    trainer.form.models_dir.editingFinished.emit()  # what Enter or leaving the field does
    assert labeller.models_dir == elsewhere and labeller.models_field.edit.text() == str(elsewhere)
    assert labeller.model_names() == ["chl"]
    assert trainer.form.models_folder() == elsewhere

    # changed in the label dock, the train dock follows; and the next session starts there
    labeller.models_field.edit.setText(str(models_dir))
    labeller.models_field.edit.editingFinished.emit()
    assert trainer.form.models_dir.text() == str(models_dir) and labeller.model_names() == []
    assert DockSettings(shared_settings().path).models_dir == models_dir


def test_the_remembered_folder_comes_back_unless_the_environment_names_one(tmp_path, monkeypatch):
    settings = DockSettings(tmp_path / "settings.json")
    monkeypatch.delenv("PLANTBIO_MODELS_DIR")
    settings.set_models_dir(tmp_path / "mine")
    assert DockSettings(tmp_path / "settings.json").models_dir == tmp_path / "mine"
    monkeypatch.setenv("PLANTBIO_MODELS_DIR", str(tmp_path / "lab"))
    assert DockSettings(tmp_path / "settings.json").models_dir == tmp_path / "lab"
    (tmp_path / "settings.json").write_text("{not json")
    assert DockSettings(tmp_path / "settings.json").models_dir == tmp_path / "lab"  # a spoilt file: defaults
    private = DockSettings(tmp_path / "other.json", models_dir=tmp_path / "theirs", persist=False)
    private.set_models_dir(tmp_path / "x")
    assert not (tmp_path / "other.json").exists()
