"""A training job of several processes, run by the command line as a subprocess and followed from the dock.

Several data-parallel processes cannot live in napari's process (each needs its own interpreter), so the dock
saves the data to ``.npy`` files and the job to a job file (``config.job_document``: the job as recorded, and
where the data is), starts ``napari-plantbio-train train --config JOB --events jsonl`` and reads its JSON lines
back into the events ``train`` yields (``io.wire.follow``). ``train_in_processes`` has ``train``'s
signature, so the dock runs it in the same napari worker and shows its events with the same handlers.

Stopping: once the job has said where its model folder is (its ``started`` line), the STOP file there asks every
rank to stop at the next iteration with a checkpoint; a job that has not ended ``STOP_GRACE_S`` after the
request gets SIGTERM (the same request, by signal), and ``KILL_GRACE_S`` later its whole process group is
killed. Whatever the ending, the process is gone and the data files are removed before the generator returns.
Nothing here uses Qt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..io.wire import JobFailed, follow, stop_file
from ..job.config import ConfigError, TrainConfig, job_document
from ..job.events import Event, Started

TEMP_PREFIX = "plantbio-dock-job-"
POLL_S = 0.2
STOP_GRACE_S = 60.0  # an iteration, a validation and a checkpoint of a large CPU job fit in this
KILL_GRACE_S = 60.0  # after SIGTERM: the ranks stop at the next iteration as for the STOP file
STDERR_LINES = 8


def train_in_processes(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *,
                       extra_pairs: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                       auto_labels: np.ndarray | None = None, models_dir: str | Path | None = None,
                       stop: threading.Event | None = None) -> Generator[Event, None, Path]:
    """``train`` for a job of ``processes_per_machine(config)`` processes: the data goes to a temporary folder,
    the command line trains, and its events come back here. Bad input the processes find is a ``ConfigError``
    naming the field, as from ``train``; a job that ends any other way without finishing is a ``JobFailed``."""
    if models_dir is None:
        from ..models.store import default_models_dir

        models_dir = default_models_dir()
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder:
        job_file = Path(folder) / "job.json"
        job_file.write_text(json.dumps(_saved(config, Path(folder), image, labels, extra_pairs, auto_labels)))
        command = [sys.executable, "-m", "napari_plantbio_train.cli", "train", "--config", str(job_file),
                   "--models-dir", str(Path(models_dir).absolute()), "--events", "jsonl", "--quiet"]
        return (yield from follow_command(command, Path(folder) / "stderr.txt", stop or threading.Event()))


def follow_command(command: list[str], stderr_path: Path,
                   stop: threading.Event) -> Generator[Event, None, Path]:
    """Run ``command`` (a ``train --events jsonl`` line) and yield its events until it ends; ``stop`` set asks
    it to stop. Returns the model folder of a finished job."""
    with open(stderr_path, "w+", encoding="utf-8", errors="replace") as stderr:
        # Its own process group: the launcher's ranks can be ended together if the launcher itself will not end.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                   text=True, encoding="utf-8", errors="replace", start_new_session=True)
        job = _Job(process, stop)
        guard = threading.Thread(target=_guard, args=(job,), daemon=True, name="plantbio-job-guard")
        guard.start()
        try:
            folder = yield from _events(job)
            job.output_over = True
        except JobFailed as failed:
            job.output_over = True  # the job said why it failed and is ending by itself
            raise _config_error(failed) from None
        finally:
            job.leaving.set()
            guard.join()
            process.stdout.close()
        if folder is None:
            code = process.returncode
            how = f"were killed by signal {-code}" if code < 0 else f"ended with exit status {code}"
            raise JobFailed(f"the training processes {how} without finishing{_tail(stderr)}")
        return folder


@dataclass
class _Job:
    """What the follower and its guard thread share."""

    process: subprocess.Popen
    stop: threading.Event
    model_dir: Path | None = None  # known from the job's ``started`` line
    output_over: bool = False  # the job's output ended: it is exiting by itself
    leaving: threading.Event = field(default_factory=threading.Event)  # the follower stopped reading


def _events(job: _Job) -> Generator[Event, None, Path | None]:
    events = follow(job.process.stdout)
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if isinstance(event, Started):
            job.model_dir = event.model_dir
        yield event


def _guard(job: _Job) -> None:
    """Beside the follower, which waits on the job's output: a stop request (or a follower that left while the
    job runs) becomes the STOP file once the model folder is known; a job still running ``STOP_GRACE_S`` later
    gets SIGTERM, then its process group is killed. Never a hang, and never a process left behind."""
    process = job.process
    while process.poll() is None and not job.stop.is_set() and not job.leaving.is_set():
        time.sleep(POLL_S)
    asked, touched = time.monotonic(), False
    while process.poll() is None and time.monotonic() - asked < STOP_GRACE_S:
        wanted = job.stop.is_set() or not job.output_over
        if wanted and job.model_dir is not None and not touched:
            stop_file(job.model_dir).touch()
            touched = True
        time.sleep(POLL_S)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the launcher forwards it: the same stop, by signal
        try:
            process.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)  # still unreaped, so its group id is still its own
            process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _saved(config: TrainConfig, folder: Path, image: np.ndarray, labels: np.ndarray,
           extra_pairs: Sequence[tuple[np.ndarray, np.ndarray]], auto_labels: np.ndarray | None) -> dict:
    """The job file: the job as recorded, with its data as ``.npy`` files in ``folder`` (each process reads them
    itself)."""
    def save(name: str, array: np.ndarray) -> str:
        path = folder / f"{name}.npy"
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        return str(path)

    extra = [(save(f"image_{i + 2}", i_), save(f"labels_{i + 2}", lab)) for i, (i_, lab) in enumerate(extra_pairs)]
    data = {"image": save("image", image), "labels": save("labels", labels),
            "extra_images": [i for i, _ in extra], "extra_labels": [lab for _, lab in extra]}
    if config.touched_only and auto_labels is not None:
        data["auto_labels"] = save("auto_labels", auto_labels)
    return job_document(config, data)


def _config_error(failed: JobFailed) -> Exception:
    """Bad input named by the job becomes the ``ConfigError`` the form marks, as in the one-process path."""
    if failed.field is None:
        return failed
    message = str(failed)
    prefix = f"{failed.field}: "
    return ConfigError(failed.field, message[len(prefix):] if message.startswith(prefix) else message)


def _tail(stderr: IO[str]) -> str:
    stderr.flush()
    stderr.seek(0)
    lines = [line.rstrip() for line in stderr.read().splitlines() if line.strip()]
    return ": " + " | ".join(lines[-STDERR_LINES:]) if lines else " and wrote nothing on its error output"
