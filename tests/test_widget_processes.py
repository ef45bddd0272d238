"""The dock's job of several processes: the command line trains as a subprocess, the dock follows its events.

The viewer tests run real two-process CPU jobs (gloo) on the plate crop; each spawned process imports torch, so a
job needs a few seconds before its first iteration. The follower's own failure paths run with small stand-in
programs instead, which need no torch.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_plantbio_train.runtime.hardware import processes_per_machine
from napari_plantbio_train.io import wire
from napari_plantbio_train._widgets import job_process
from napari_plantbio_train._widgets.job_process import TEMP_PREFIX, follow_command
from napari_plantbio_train.cli.parser import build_parser
from napari_plantbio_train.cli.commands import config_from_args, job_from_args
from napari_plantbio_train.job.config import job_document, unsaved_layer
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.io.wire import JobFailed
from napari_plantbio_train.job.events import Finished, Started
from napari_plantbio_train.models.store import ModelStore
from test_widget import JOB_TIMEOUT_MS, TINY, dock  # noqa: F401 (dock is a fixture)

TWO = dict(TINY, gpus=0, workers=2, cpu_processes=2)  # two threads for the two processes: one each


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """Where the dock's temporary data folders go during the test, to see them come and go."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _job_folders(root: Path) -> list[Path]:
    return sorted(root.glob(f"{TEMP_PREFIX}*"))


# ----- the dock -----------------------------------------------------------------------------------------------
def test_two_process_job_shows_live_losses_and_stops_with_a_checkpoint(dock, qtbot, plate_crop,  # noqa: F811
                                                                      temp_root):
    viewer, widget, models = dock
    image, labels = plate_crop
    viewer.add_image(image, name="raw")
    viewer.add_labels(labels, name="truth")
    widget.form.set_values(name="pair", mode="semantic", dims="2d", window=(64, 64),
                           **{**TWO, "iterations": 100_000})
    assert processes_per_machine(widget.build_config()) == 2
    assert widget.start(), widget.status.text()
    assert "2 processes" in widget.status.text()
    qtbot.waitUntil(lambda: len(widget.loss_points) >= 1, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.model_dir, Path) and widget.model_dir == models / "pair"
    [folder] = _job_folders(temp_root)
    assert (folder / "image.npy").is_file() and (folder / "labels.npy").is_file()
    np.testing.assert_array_equal(np.load(folder / "labels.npy"), labels)
    assert widget.train_button.text() == "Stop" and not widget.form.isEnabled()

    widget.train_button.click()
    assert widget.train_button.text() == "Stopping…"
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)

    finished = widget.last_event
    assert widget.error is None, widget.error
    assert isinstance(finished, Finished) and finished.stopped and finished.reason == "stopped"
    assert 1 <= finished.iteration < 100_000
    model, record = ModelStore(models).load_model("pair", which="last")
    assert record.iterations_done == finished.iteration
    assert sum(p.numel() for p in model.parameters()) > 0
    meta = json.loads((models / "pair" / "model.json").read_text())
    assert [run["world_size"] for run in meta["runs"]] == [2], "two processes trained, not this one"
    assert not wire.stop_file(models / "pair").exists(), "the job removes the STOP file it was sent"
    assert _job_folders(temp_root) == [], "the data folder goes with the job"
    assert widget.train_button.text() == "Train" and widget.form.isEnabled()
    assert f"Model saved in {models / 'pair'}" in widget.status.text()


def test_bad_input_found_by_the_processes_is_marked_and_the_dock_trains_again(dock, qtbot, plate_crop,  # noqa: F811
                                                                             temp_root):
    """Unpainted labels pass the form's checks (only the engine looks inside them): the subprocess's ranks find
    them, and its error line marks the field as the one-process path does."""
    viewer, widget, models = dock
    image, labels = plate_crop
    viewer.add_image(image, name="raw")
    unpainted = viewer.add_labels(np.zeros(image.shape, np.uint8), name="unpainted")
    widget.form.set_values(name="empty", mode="semantic", dims="2d", window=(64, 64), **TWO)
    assert widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.error, ConfigError) and widget.error.field == "labels"
    assert "empty" in widget.form.error_text("labels")
    assert "empty" in widget.status.text()
    assert widget.train_button.text() == "Train" and widget.form.isEnabled()
    assert _job_folders(temp_root) == []
    assert "empty" not in ModelStore(models).names()

    # Still usable: the painted labels, in this process, train to the end.
    viewer.layers.remove(unpainted)
    widget.form.set_values(labels=viewer.add_labels(labels, name="truth"), cpu_processes=1,
                           iterations=4, validate_every=4, iteration_save=4)
    assert widget.start(), widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None, widget.error
    assert isinstance(widget.last_event, Finished) and widget.last_event.reason == "completed"
    assert widget.form.error_text("labels") == ""


def test_removing_the_picked_image_stops_the_processes_with_a_checkpoint(dock, qtbot, plate_crop,  # noqa: F811
                                                                          temp_root):
    viewer, widget, models = dock
    image, labels = plate_crop
    raw = viewer.add_image(image, name="raw")
    viewer.add_labels(labels, name="truth")
    widget.form.set_values(name="orphan", mode="semantic", dims="2d", window=(64, 64),
                           **{**TWO, "iterations": 100_000})
    assert widget.start(), widget.status.text()
    qtbot.waitUntil(lambda: len(widget.loss_points) >= 1, timeout=JOB_TIMEOUT_MS)
    viewer.layers.remove(raw)
    assert "'raw' was removed" in widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.last_event, Finished) and widget.last_event.reason == "stopped"
    assert ModelStore(models).record("orphan").iterations_done == widget.last_event.iteration
    assert _job_folders(temp_root) == []


def test_cpu_processes_field_round_trips_and_is_checked(dock):  # noqa: F811
    _, widget, _ = dock
    widget.form.set_values(name="m", cpu_processes=3, gpus=0)
    assert widget.build_config().cpu_processes == 3
    assert widget.form.cpu_processes.tooltip
    widget.form.show_errors([ConfigError("cpu_processes", "use fewer")])
    assert widget.form.error_text("cpu_processes") == "use fewer"
    assert widget.form.advanced.isVisibleTo(widget.form), "an advanced field's error opens the advanced section"


# ----- the follower without a viewer --------------------------------------------------------------------------
def test_the_command_line_reads_the_dock_job_back(tmp_path):
    config = TrainConfig(name="m", mode="instance", dims="2d", image="/d/i.npy", labels="/d/l.npy",
                         extra_images=("/d/i2.npy",), extra_labels=("/d/l2.npy",), pair_weights=(1.0, 0.5),
                         touched_only=True, auto_labels="/d/auto.npy", window=(64, 64), gpus=0, cpu_processes=2,
                         voxel_size=(4.0, 5.0, 30.0), lr=3e-4, time_limit_min=2.5, painted_slices_only=True,
                         ignore_value=7, seed=3, val_fraction=0.2, precision="fp32")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(job_document(config)))
    assert config_from_args(build_parser().parse_args(["train", "--config", str(job)])) == config
    # The dock's job records the layers' sources and reads temporary copies: both come back.
    recorded = config.replace(image=unsaved_layer("EM"), labels="/lab/labels.tif")
    job.write_text(json.dumps(job_document(recorded, {"image": "/tmp/i.npy", "labels": "/tmp/l.npy"})))
    again, data = job_from_args(build_parser().parse_args(["train", "--config", str(job)]))
    assert again == recorded and (data["image"], data["labels"]) == ("/tmp/i.npy", "/tmp/l.npy")
    with pytest.raises(ConfigError) as error:
        job_document(config.replace(auto_labels=None))
    assert error.value.field == "auto_labels"


def test_a_process_that_dies_without_an_error_line_fails_with_its_last_error_output(tmp_path):
    script = "import sys; print('not an event'); sys.stderr.write('Traceback\\nMemoryError: cannot\\n'); sys.exit(3)"
    began = time.monotonic()
    with pytest.raises(JobFailed) as failed:
        list(follow_command([sys.executable, "-c", script], tmp_path / "stderr.txt", threading.Event()))
    assert "exit status 3" in str(failed.value) and "MemoryError: cannot" in str(failed.value)
    assert time.monotonic() - began < 10


def test_a_stop_that_is_not_obeyed_ends_the_process_within_the_bounds(tmp_path, monkeypatch):
    """A job that says it started but ignores the STOP file and SIGTERM: killed after the two grace periods."""
    monkeypatch.setattr(job_process, "STOP_GRACE_S", 0.5)
    monkeypatch.setattr(job_process, "KILL_GRACE_S", 0.5)
    started = wire.event_record(Started(model_dir=tmp_path / "m", start_iteration=0, total_iterations=10,
                                               device="cpu", window=(64, 64), validation_region=((0, 1),) * 3))
    script = ("import json, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"print(json.dumps({started!r}), flush=True); time.sleep(60)")
    (tmp_path / "m").mkdir()
    stop = threading.Event()
    events = follow_command([sys.executable, "-c", script], tmp_path / "stderr.txt", stop)
    assert isinstance(next(events), Started)
    stop.set()
    began = time.monotonic()
    with pytest.raises(JobFailed, match="killed by signal 9"):
        next(events)
    assert time.monotonic() - began < 10
    assert wire.stop_file(tmp_path / "m").exists(), "the STOP file came first"
