"""Model folders: one owner at a time, files read only from inside, model.json checked, disk bounded, damaged and
unfinished folders shown, pickles refused in one line."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import tifffile
import torch

from napari_plantbio_train.cli import main
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.job.events import CheckpointSaved, Progress, Started, run_to_end
from napari_plantbio_train.models.lock import FolderLock, holder, lock_path
from napari_plantbio_train.models.store import ModelError, ModelStore
from napari_plantbio_train.training.loop import train

TINY = dict(base_channels=4, depth=2, iterations=4, validate_every=2, iteration_save=2, log_every=1,
            batch_size=1, workers=2, lr=3e-3)


@pytest.fixture
def stack_files(tmp_path, chloroplast_crop):
    image, labels = chloroplast_crop
    image_path, labels_path = tmp_path / "image.npy", tmp_path / "labels.npy"
    import numpy as np

    np.save(image_path, image)
    np.save(labels_path, labels)
    return image_path, labels_path


def _train_args(image, labels, models_dir, name, *extra):
    return ["train", "--image", str(image), "--labels", str(labels), "--mode", "instance", "--dims", "2d",
            "--name", name, "--window", "64,64", "--gpus", "0", "--workers", "1", "--iteration-save", "2",
            "--iterations", "4", "--batch-size", "1", "--validate-every", "2", "--base-channels", "4",
            "--depth", "2", "--log-every", "1", "--models-dir", str(models_dir), "--quiet", *extra]


def _cli(*args):
    return [sys.executable, "-m", "napari_plantbio_train.cli", *map(str, args)]


@pytest.fixture
def models(tiny_models, tmp_path):
    """A copy of the shared tiny models, to change."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models, root, ignore=shutil.ignore_patterns(".*.lock"))
    return root


def _edit(root, name, **fields):
    path = root / name / "model.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


# ----- one owner ------------------------------------------------------------------------------------------------
def test_two_jobs_started_together_leave_one_run_in_the_folder(stack_files, tmp_path):
    root = tmp_path / "models"
    args = _train_args(*stack_files, root, "twice", "--iterations", "30", "--iteration-save", "10")
    jobs = [subprocess.Popen(_cli(*args[0:]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(job.wait(timeout=600), *job.communicate()) for job in jobs]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [0, 2], results
    (_, _, refused), = [r for r in results if r[0] == 2]
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: name: "), refused
    winner = next(job.pid for job, (status, _, _) in zip(jobs, results) if status == 0)
    # Refused while the other ran (naming it), or after it had finished (the name is taken): never both writing.
    assert f"process {winner} on " in lines[0] or "already exists" in lines[0]
    rows = [int(r["iteration"]) for r in csv.DictReader(open(root / "twice" / "metrics.csv"))]
    assert rows == list(range(1, 31)), "one run's rows, in order"
    record = ModelStore(root).record("twice")
    assert record.iterations_done == 30 and record.config.iterations == 30
    assert holder(root, "twice") is None  # released with the job


def test_a_held_folder_is_refused_in_one_line_naming_the_holder(stack_files, tmp_path):
    root = tmp_path / "models"
    with FolderLock(root, "held"):
        done = subprocess.run(_cli(*_train_args(*stack_files, root, "held")), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: name: model 'held' "), done.stderr
        assert f"process {os.getpid()} on " in lines[0] and " since " in lines[0]
        # several processes: refused before any is launched, with the same words
        launched = subprocess.run(_cli(*_train_args(*stack_files, root, "held", "--cpu-processes", "2")),
                                  capture_output=True, text=True, timeout=300)
        assert launched.returncode == 2 and launched.stderr.count("\n") == 1
        assert f"process {os.getpid()} on " in launched.stderr
    assert not (root / "held").exists()  # nothing was written by the refused jobs


def test_the_dock_path_holds_the_same_lock(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="docked", mode="instance", dims="2d", window=(64, 64), **TINY)
    events = train(config, image, labels, models_dir=models_dir)
    assert isinstance(next(events), Started)
    with pytest.raises(ConfigError, match=f"process {os.getpid()} on .* since") as refused:
        next(train(config, image, labels, models_dir=models_dir))
    assert refused.value.field == "name"
    run_to_end(events)
    assert ModelStore(models_dir).record("docked").iterations_done == 4
    assert holder(models_dir, "docked") is None


def test_a_stale_lock_is_taken_over(chloroplast_crop, models_dir):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    models_dir.mkdir(parents=True)
    lock_path(models_dir, "stale").write_text(json.dumps({"pid": int(gone.stdout), "host": "here",
                                                          "since": "yesterday", "command": "train"}))
    assert holder(models_dir, "stale") is None  # its process is gone: nothing holds it
    image, labels = chloroplast_crop
    config = TrainConfig(name="stale", mode="instance", dims="2d", window=(64, 64), **TINY)
    run_to_end(train(config, image, labels, models_dir=models_dir))
    assert ModelStore(models_dir).exists("stale")


# ----- confinement and schema -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("best", "ABSOLUTE"), ("last", "../../../../../etc/passwd"),
                                          ("best", "../plate/checkpoints/best.pt")])
def test_checkpoints_outside_the_folder_are_refused(models, field, value):
    if value == "ABSOLUTE":
        value = str(models / "plate" / "checkpoints" / "best.pt")
    _edit(models, "chl", **{field: value})
    with pytest.raises(ModelError, match=f"damaged: model.json's '{field}' names .* outside the model folder"):
        ModelStore(models).load_model("chl", field)


def test_a_link_out_of_the_folder_is_refused(models):
    best = models / "chl" / "checkpoints" / "best.pt"
    best.unlink()
    best.symlink_to(models / "plate" / "checkpoints" / "best.pt")
    with pytest.raises(ModelError, match="outside the model folder"):
        ModelStore(models).load_model("chl")


@pytest.mark.parametrize("fields, named", [
    ({"network": {"spatial_dims": 3, "in_channels": 1, "out_channels": "two"}}, "'network'.*out_channels"),
    ({"window": "64,64"}, "'window'"), ({"iterations_done": "5"}, "'iterations_done'"),
    ({"classes": [0, "a"]}, "'classes'"), ({"best": 3}, "'best'"), ({"normalisation": None}, "'normalisation'")])
def test_a_wrongly_typed_field_is_one_line_naming_it(models, tmp_path, fields, named, capsys):
    _edit(models, "chl", **fields)
    with pytest.raises(ModelError, match=named):
        ModelStore(models).record("chl")
    image = tmp_path / "image.npy"
    import numpy as np

    np.save(image, np.zeros((2, 64, 64), np.uint8))
    assert main(["predict", "--model", "chl", "--image", str(image), "--output", str(tmp_path / "o.tif"),
                 "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "damaged" in err


def test_a_missing_field_is_named(models):
    path = models / "chl" / "model.json"
    meta = json.loads(path.read_text())
    del meta["window"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model.json lacks 'window'"):
        ModelStore(models).record("chl")


# ----- retention ----------------------------------------------------------------------------------------------
def test_periodic_checkpoints_are_bounded_and_the_start_line_says_the_disk(stack_files, models_dir):
    out = io.StringIO()
    args = _train_args(*stack_files, models_dir, "bounded", "--iterations", "12", "--keep-checkpoints", "2")
    assert main(args, out=out) == 0
    folder = models_dir / "bounded"
    assert {p.name for p in (folder / "checkpoints").iterdir()} == {"iter_0000010.pt", "iter_0000012.pt", "best.pt"}
    record = ModelStore(models_dir).record("bounded")
    assert record.last == "checkpoints/iter_0000012.pt" and record.config.keep_checkpoints == 2
    started = out.getvalue().splitlines()[0]
    assert "checkpoints take up to " in started and "the newest 2 periodic, the last and the best" in started

    # The bound holds with a stop checkpoint (last.pt) beside the series too.
    stop, events = threading.Event(), []
    for event in train(record.config.replace(iterations=20), *_arrays(stack_files), models_dir=models_dir,
                       resume=True, stop=stop):
        events.append(event)
        if isinstance(event, Progress) and event.iteration == 15:
            stop.set()
    assert [e.reason for e in events if isinstance(e, CheckpointSaved)][-1] == "stop"
    planned = events[0].disk_bytes
    used = sum(p.stat().st_size for p in (folder / "checkpoints").iterdir())
    assert (folder / "checkpoints" / "last.pt").exists() and len(list((folder / "checkpoints").iterdir())) == 4
    assert used <= planned


def _arrays(stack_files):
    import numpy as np

    return [np.load(p) for p in stack_files]


def test_keep_checkpoints_must_be_at_least_one():
    problems = TrainConfig(name="x", keep_checkpoints=0).problems()
    assert [p.field for p in problems] == ["keep_checkpoints"]


# ----- damaged and unfinished folders ----------------------------------------------------------------------------
def test_damaged_and_unfinished_folders_are_listed_and_not_reused(models, stack_files, capsys):
    crashed = models / "crashed"
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copy(models / "chl" / "config.json", crashed / "config.json")  # a job killed before its first checkpoint
    _edit(models, "plate", last="../chl/checkpoints/best.pt")
    out = io.StringIO()
    assert main(["models", "--models-dir", str(models)], out=out) == 0
    lines = out.getvalue().splitlines()
    assert any(line.startswith("chl ") for line in lines)
    (unfinished,) = [line for line in lines if line.startswith("crashed: ")]
    assert "unfinished" in unfinished and "nothing to resume" in unfinished and "remove the folder" in unfinished
    (damaged,) = [line for line in lines if line.startswith("plate: ")]
    assert "damaged" in damaged and "outside the model folder" in damaged and "remove the folder" in damaged
    listing = io.StringIO()
    assert main(["models", "--models-dir", str(models), "--json"], out=listing) == 0
    states = {row["name"]: row.get("state", "model") for row in map(json.loads, listing.getvalue().splitlines())}
    assert states == {"chl": "model", "crashed": "unfinished", "plate": "damaged"}

    assert main(_train_args(*stack_files, models, "crashed")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: name: ") and "unfinished" in err
    assert (crashed / "config.json").exists()  # not reused, not removed


# ----- pickles ----------------------------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickled_checkpoint_is_refused_in_one_line(models, tmp_path, capsys):
    torch.save({"model": _Payload()}, models / "chl" / "checkpoints" / "best.pt")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, __import__("numpy").zeros((2, 64, 64), "uint8"))
    assert main(["predict", "--model", "chl", "--image", str(image), "--output", str(tmp_path / "o.tif"),
                 "--models-dir", str(models)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert "is not a weights-only checkpoint" in captured.err and "was not loaded" in captured.err
    assert "weights_only=False" not in captured.err and "code ran" not in captured.out
    assert not (tmp_path / "o.tif").exists()
