"""Faults end in one line: a full disk (a file-size limit set in a child process) names the file, what it needed and
the checkpoint that is still good; SIGTERM stops a job with a checkpoint and its own exit status."""

from __future__ import annotations

import io
import json
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from napari_plantbio_train.cli import main
from napari_plantbio_train.io.wire import follow
from napari_plantbio_train.job.events import Finished, Progress
from napari_plantbio_train.models.store import ModelStore

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and signals as on Linux")


@pytest.fixture
def stack_files(tmp_path, chloroplast_crop):
    image, labels = chloroplast_crop
    paths = tmp_path / "image.npy", tmp_path / "labels.npy"
    np.save(paths[0], image)
    np.save(paths[1], labels)
    return paths


def _train(image, labels, models_dir, name, *extra):
    return ["train", "--image", str(image), "--labels", str(labels), "--mode", "instance", "--dims", "2d",
            "--name", name, "--window", "64,64", "--gpus", "0", "--workers", "1", "--iteration-save", "2",
            "--iterations", "4", "--batch-size", "1", "--validate-every", "2", "--base-channels", "4",
            "--depth", "2", "--models-dir", str(models_dir), "--quiet", *extra]


def _limited(args, limit_bytes):
    """The command line in a child whose files may not grow past ``limit_bytes`` (as with ``ulimit -f``)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "napari_plantbio_train.cli", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)


@linux_only
def test_a_full_disk_in_training_is_one_line_and_the_last_checkpoint_stays(stack_files, models_dir):
    assert main(_train(*stack_files, models_dir, "full")) == 0
    folder = models_dir / "full"
    full_size = (folder / "checkpoints" / "iter_0000004.pt").stat().st_size
    resume = ["train", "--name", "full", "--resume", "--iterations", "8", "--models-dir", str(models_dir), "--quiet"]
    done = _limited(resume, full_size // 2)  # room for the small files and best.pt, not a full checkpoint
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    line = lines[0]
    assert line.startswith("error: could not write ") and "iter_0000006.pt" in line
    assert " KB needed" in line and "file-size limit" in line
    assert "the last good checkpoint is iteration 4" in line and "train --resume --name full" in line
    assert ModelStore(models_dir).record("full").iterations_done == 4
    assert not list((folder / "checkpoints").glob(".*tmp*"))  # no half-written file left
    assert main(resume) == 0  # with room again, it resumes from there
    assert ModelStore(models_dir).record("full").iterations_done == 8


@linux_only
def test_a_full_disk_in_prediction_is_one_line_and_leaves_nothing(tiny_models, tmp_path, chloroplast_crop):
    image = tmp_path / "image.npy"
    np.save(image, chloroplast_crop[0][:, :128, :128])
    output = tmp_path / "labels.tif"
    done = _limited(["predict", "--model", "chl", "--image", str(image), "--output", str(output), "--models-dir",
                     str(tiny_models), "--probabilities", str(tmp_path / "maps.zarr"), "--quiet"], 4096)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: could not write ") and ("labels.tif" in lines[0] or "maps.zarr" in lines[0])
    assert "needed" in lines[0] and "nothing was written" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy"]


@linux_only
def test_sigterm_stops_with_a_checkpoint_and_exits_143(stack_files, models_dir):
    args = [sys.executable, "-m", "napari_plantbio_train.cli",
            *_train(*stack_files, models_dir, "term", "--iterations", "100000", "--iteration-save", "100000",
                    "--validate-every", "100000", "--events", "jsonl")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    try:
        for line in process.stdout:
            events += list(follow([line]))
            if events and isinstance(events[-1], Progress) and events[-1].iteration >= 3:
                process.send_signal(signal.SIGTERM)
                break
        rest = process.stdout.read()
        status = process.wait(timeout=300)
    finally:
        process.kill()
    assert status == 143, process.stderr.read()
    finished = list(follow(rest.splitlines()))[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped"
    assert ModelStore(models_dir).record("term").iterations_done == finished.iteration >= 3


def test_a_stop_file_still_exits_0_and_a_completed_job_too(stack_files, models_dir):
    out = io.StringIO()
    assert main(_train(*stack_files, models_dir, "done", "--events", "jsonl"), out=out) == 0
    assert json.loads(out.getvalue().splitlines()[-1])["reason"] == "completed"
