"""Each dock's job is one evented state, and its buttons and progress bar follow it (real viewer, tiny jobs)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_plantbio_train._widgets.common import DockState, JobState
from napari_plantbio_train._widgets.label_widget import AutoLabelWidget
from napari_plantbio_train._widgets.train_widget import TrainWidget

TIMEOUT_MS = 120_000  # a ceiling for few-second jobs on a busy machine, not a speed claim


def _recorded(state: DockState) -> list[JobState]:
    seen: list[JobState] = []
    state.changed.connect(seen.append)
    return seen


def test_a_state_moves_only_as_a_job_can():
    state = DockState()
    with pytest.raises(ValueError, match="from idle to running"):
        state.set(JobState.RUNNING)
    for step in (JobState.PREPARING, JobState.RUNNING, JobState.DONE, JobState.PREPARING):
        state.set(step)
    assert state.state == JobState.PREPARING and state.state.active


def test_train_dock_follows_its_state_through_a_stop(make_napari_viewer, qtbot, plate_crop, tmp_path):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    image, labels = plate_crop
    viewer.add_image(image, name="raw")
    viewer.add_labels(labels, name="truth")
    widget.form.set_values(models_dir=tmp_path / "models", name="states", mode="semantic", window=(64, 64),
                           base_channels=4, depth=2, batch_size=2, workers=1, iterations=100_000)
    seen = _recorded(widget.state)
    assert widget.start(), widget.status.text()
    assert widget.train_button.text() == "Stop" and not widget.form.isEnabled()
    assert widget.progress.format() == "preparing…"
    qtbot.waitUntil(lambda: widget.state.state == JobState.RUNNING and bool(widget.loss_points), timeout=TIMEOUT_MS)
    widget.train_button.click()
    assert widget.state.state == JobState.STOPPING and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert seen == [JobState.PREPARING, JobState.RUNNING, JobState.STOPPING, JobState.STOPPED]
    assert widget.train_button.text() == "Train" and widget.form.isEnabled() and widget.resume_button.isEnabled()
    assert widget.progress.format().endswith("· stopped")


def test_label_dock_follows_its_state_to_done_and_to_failed(make_napari_viewer, qtbot, tiny_models,
                                                            chloroplast_crop):
    viewer = make_napari_viewer()
    widget = AutoLabelWidget(viewer, models_dir=tiny_models)
    widget.in_process.setChecked(True)
    viewer.add_image(chloroplast_crop[0][:, :64, :64], name="raw")
    widget.select_model("chl")
    seen = _recorded(widget.state)
    assert widget.start()
    assert not widget.label_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert seen == [JobState.PREPARING, JobState.RUNNING, JobState.DONE]
    assert widget.label_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress.format().startswith("done in")

    seen.clear()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="flat")  # one slice for a 3D model: refused in the job
    widget.image_picker.value = viewer.layers["flat"]
    assert widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert seen == [JobState.PREPARING, JobState.FAILED] and widget.progress.format() == "failed"
    assert widget.label_button.isEnabled()
