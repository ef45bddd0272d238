"""Nothing a job does can take the viewer down: the docks' jobs run in child processes, and when a child dies
(a segmentation fault, SIGKILL, killed inside a checkpoint write) the viewer, its layers and the last good
checkpoint stay, the dock says what happened, and Resume continues.

The crashes are real: a real signal in a real child process, made on purpose through PLANTBIO_TEST_FAULT
(job/faults.py) or sent by the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_plantbio_train.job.events import Finished
from napari_plantbio_train.job.faults import FAULT_ENV
from napari_plantbio_train.models.store import ModelStore
from test_widget import JOB_TIMEOUT_MS, TINY, dock  # noqa: F401 (dock is a fixture)

ChildDied = pytest.importorskip("napari_plantbio_train._widgets.job_process").ChildDied
AutoLabelWidget = pytest.importorskip("napari_plantbio_train._widgets.label_widget").AutoLabelWidget
ENDLESS = dict(TINY, iterations=100_000, iteration_save=2, validate_every=100_000)


def _children(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (a job's name or folder): the dock's job processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in command and "napari_plantbio_train.cli" in command:
                found.append(int(entry.name))
    return found


def _start_plate_job(dock, plate, name, qtbot, **fields):
    viewer, widget, models = dock
    image, labels = plate
    viewer.add_image(image, name="raw")
    painted = viewer.add_labels(labels.copy(), name="truth")
    widget.form.set_values(name=name, mode="semantic", dims="2d", window=(64, 64), **{**ENDLESS, **fields})
    assert widget.start(), widget.status.text()
    return viewer, widget, models, painted


def _resumes(widget, qtbot, models, name, done):
    """Resume from the last checkpoint kept and train two more iterations."""
    widget.form.set_values(iterations=done + 2)
    assert widget.resume_button.isEnabled()
    assert widget.resume(), widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None, widget.error
    assert widget.started.start_iteration == done
    assert isinstance(widget.last_event, Finished) and widget.last_event.iteration == done + 2
    assert ModelStore(models).record(name).iterations_done == done + 2


@pytest.mark.parametrize("fault", ["segfault", "abort"])
def test_a_child_that_crashes_leaves_the_viewer_its_labels_and_a_checkpoint(dock, plate_crop, qtbot, monkeypatch,
                                                                          fault):  # noqa: F811
    monkeypatch.setenv(FAULT_ENV, f"{fault}@5")
    viewer, widget, models, painted = _start_plate_job(dock, plate_crop, f"crash-{fault}", qtbot)
    before = painted.data.copy()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.error, ChildDied)
    text = widget.status.text()
    assert ("SIGSEGV" if fault == "segfault" else "SIGABRT") in text and "napari and your layers are untouched" in text
    assert "at iteration 5" in text and "last checkpoint kept is iteration 4" in text and "Resume" in text
    np.testing.assert_array_equal(painted.data, before)  # the labels layer, and the viewer, are as they were
    viewer.add_points([[1, 1]], name="still alive")
    assert [layer.name for layer in viewer.layers][-1] == "still alive"
    model, record = ModelStore(models).load_model(f"crash-{fault}", which="last")
    assert record.iterations_done == 4 and sum(p.numel() for p in model.parameters()) > 0
    monkeypatch.delenv(FAULT_ENV)
    _resumes(widget, qtbot, models, f"crash-{fault}", 4)


def test_a_child_killed_by_sigkill_mid_training(dock, plate_crop, qtbot):  # noqa: F811
    viewer, widget, models, painted = _start_plate_job(dock, plate_crop, "killed", qtbot)
    qtbot.waitUntil(lambda: len(widget.loss_points) >= 5, timeout=JOB_TIMEOUT_MS)
    [pid] = _children(str(models))
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.error, ChildDied) and "SIGKILL" in widget.status.text()
    kept = widget.error.last_checkpoint
    assert kept is not None and kept >= 4
    record = ModelStore(models).record("killed")
    assert record.iterations_done >= kept  # the newest the job wrote, complete
    ModelStore(models).load_model("killed", which="last")
    assert painted.data.any()
    _resumes(widget, qtbot, models, "killed", record.iterations_done)


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, plate_crop):
    """Killed half way through writing iteration 4's checkpoint: iteration 2's stays the model's, and resumes."""
    import tifffile

    image, labels = plate_crop
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    models = tmp_path / "models"
    command = [sys.executable, "-m", "napari_plantbio_train.cli", "train", "--image", str(tmp_path / "image.tif"),
               "--labels", str(tmp_path / "labels.tif"), "--mode", "semantic", "--dims", "2d", "--name", "held",
               "--window", "64,64", "--iterations", "100", "--iteration-save", "2", "--validate-every", "1000",
               "--base-channels", "4", "--depth", "2", "--batch-size", "2", "--models-dir", str(models), "--quiet"]
    child = subprocess.Popen(command, env={**os.environ, FAULT_ENV: "hold-write@iter_0000004.pt"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = models / "held" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob(".iter_0000004.pt.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(checkpoints.glob(".iter_0000004.pt.tmp-*")), "the write of iteration 4 began"
    child.kill()
    child.wait(timeout=60)
    model, record = ModelStore(models).load_model("held", which="last")
    assert record.iterations_done == 2 and not (checkpoints / "iter_0000004.pt").exists()
    again = subprocess.run([sys.executable, "-m", "napari_plantbio_train.cli", "train", "--name", "held",
                            "--resume", "--iterations", "6", "--models-dir", str(models), "--quiet"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert ModelStore(models).record("held").iterations_done == 6


@pytest.fixture
def label_dock(make_napari_viewer, tiny_models, tmp_path, monkeypatch):
    # Where the session's results go; the precision verdicts of this machine come along, so nothing re-probes.
    cache = tmp_path / "cache"
    shutil.copytree(os.environ["PLANTBIO_CACHE_DIR"], cache, dirs_exist_ok=True)
    monkeypatch.setenv("PLANTBIO_CACHE_DIR", str(cache))
    viewer = make_napari_viewer()
    widget = AutoLabelWidget(viewer, models_dir=tiny_models)
    viewer.window.add_dock_widget(widget, name="Auto-label with a model")
    return viewer, widget, cache


def test_auto_label_on_a_zarr_layer_gives_a_zarr_result_and_forgets_it_with_the_layer(label_dock, qtbot, tmp_path,
                                                                                    chloroplast_crop):
    import zarr

    viewer, widget, cache = label_dock
    image, _ = chloroplast_crop
    store = tmp_path / "big.zarr"
    zarr.open_array(store=str(store), mode="w", shape=image.shape, dtype=image.dtype, chunks=(1, 96, 96))[:] = image
    [layer] = viewer.open(str(store), plugin="napari-plantbio-train")
    widget.image_picker.value = layer
    widget.select_model("chl")
    widget.show_doubt.setChecked(True)
    assert widget.start(), widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None, widget.error
    result = viewer.layers[f"{layer.name} [chl]"]
    assert type(result.data).__module__.startswith("zarr"), "the result stays on disk, read lazily"
    assert result.data.shape == image.shape
    [folder] = list((cache / "results").iterdir())
    assert (folder / "labels.zarr").is_dir() and (folder / "original.zarr").is_dir()
    kept = result.metadata["plantbio_auto_label"]["labels"]
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(result.data))
    model_said = int(kept[0, 0, 0])
    result.data_setitem((np.array([0]), np.array([0]), np.array([0])), 77)  # painting writes into the store
    assert int(zarr.open_array(store=str(folder / "labels.zarr"), mode="r")[0, 0, 0]) == 77
    assert int(kept[0, 0, 0]) == model_said != 77, "the model's own result stays as it was"
    for other in [lay for lay in viewer.layers if lay.name.startswith(f"{layer.name} [chl]")]:
        viewer.layers.remove(other)
    assert not folder.exists(), "the stores go with the last layer that showed them"


@pytest.mark.parametrize("in_process", [True, False])
def test_a_model_whose_weights_are_gone_ends_the_job_with_a_message(label_dock, qtbot, tmp_path, chloroplast_crop,
                                                                    in_process):
    """An engine error (here ModelError) reaches the dock, from this process or from a child: napari's worker
    drops RuntimeErrors as a deleted Qt object's, so the package's errors are not RuntimeErrors."""
    viewer, widget, _ = label_dock
    models = tmp_path / "broken-models"
    shutil.copytree(widget.models_dir, models)
    for checkpoint in (models / "chl" / "checkpoints").glob("*.pt"):
        checkpoint.unlink()
    widget.store = ModelStore(models)
    widget.refresh_models()
    widget.select_model("chl")
    widget.in_process.setChecked(in_process)
    viewer.add_image(chloroplast_crop[0], name="raw")
    assert widget.start(), widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is not None and "is missing" in widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["raw"]
