"""The training form remembers the last values a user entered, except the model name, for the next dock."""

from __future__ import annotations

from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train._widgets.settings import DockSettings, shared_settings
from napari_plantbio_train._widgets.train_widget import TrainWidget


def test_a_remembered_value_comes_back_in_a_new_dock(make_napari_viewer):
    first = TrainWidget(make_napari_viewer())
    first.form.set_values(name="first-model", mode="semantic", iterations=1234, window=(96, 96), lr=0.004,
                          batch_size=3)
    kept = first.form.remember()
    assert kept["iterations"] == 1234 and "name" not in kept and "window" not in kept  # the window is the data's

    later = TrainWidget(make_napari_viewer())
    config, errors = later.form.read()
    assert errors == [] and config.name == ""
    assert (config.mode, config.iterations, config.window, config.lr, config.batch_size) == \
        ("semantic", 1234, None, 0.004, 3)
    assert DockSettings(shared_settings().path).form_values()["lr"] == 0.004  # on disk, for the next session


def test_a_spoilt_remembered_value_is_skipped(make_napari_viewer):
    shared_settings().remember_form({"iterations": "many", "depth": 3, "unknown": 1})
    form = TrainWidget(make_napari_viewer()).form
    config, _ = form.read()
    assert config.depth == 3 and config.iterations == TrainConfig(name="").iterations
