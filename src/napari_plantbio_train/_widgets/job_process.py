"""The dock's jobs run as the command line in a child process, followed from the dock through their JSON events.

Nothing a job does can take the viewer down: a native crash (a segmentation fault in a kernel), running out of
memory or a kill signal ends the child, and the dock says what happened while the viewer, its layers and its
undo history stay as they were. Training runs ``napari-plantbio-train train --config JOB --events jsonl``,
auto-labelling ``napari-plantbio-train predict ... --events jsonl``; ``follow_command`` turns their output back
into the events the engine yields in-process (``io.wire.follow``), so the docks handle the same events either way.

Data reaches the child without a copy where it can: a layer read from a file (this plugin's lazy stacks, a zarr
array) is passed by its path, so a 50 GB stack is not written out again; an in-memory layer is saved once as
``.npy`` into a temporary folder (``JobFolder``), which the child memory-maps. The folder goes away however the
job ends. Auto-label results come back as zarr stores the child wrote (``results_folder``), opened lazily.

Stopping: a training job is asked through its STOP file once its model folder is known (every rank stops at the
next iteration with a checkpoint); a labelling job through SIGTERM (it cancels and writes nothing). A job that has
not ended ``STOP_GRACE_S`` after the request gets SIGTERM, and ``KILL_GRACE_S`` later its whole process group is
killed. Whatever the ending, the process is gone before the generator returns. Nothing here uses Qt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..io.stacks import LazyStack
from ..io.wire import NICENESS_ENV, JobFailed, follow, stop_file
from ..job.config import ConfigError, TrainConfig, job_document
from ..job.events import CheckpointSaved, Event, LabelFinished, LabelStarted, StackFinished, Started

TEMP_PREFIX = "plantbio-dock-job-"
RESULTS = "results"  # auto-label results of this session, in the cache folder
POLL_S = 0.2
STOP_GRACE_S = 60.0  # an iteration, a validation and a checkpoint of a large CPU job fit in this
KILL_GRACE_S = 60.0  # after SIGTERM: the ranks stop at the next iteration as for the STOP file
STDERR_LINES = 8
CLI = [sys.executable, "-m", "napari_plantbio_train.cli"]
CHILD_NICENESS = 5  # the viewer first (runtime.hardware.step_aside)


class ChildDied(JobFailed):
    """A job process ended without finishing and without saying why (a crash, a kill, memory)."""

    def __init__(self, message: str, *, exitcode: int, last_checkpoint: int | None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.last_checkpoint = last_checkpoint  # the iteration of the newest checkpoint the job reported


# ----- data for the child -------------------------------------------------------------------------------------
def source_path(array: Any) -> str | None:
    """The file an array reads from, when it is one the child can open itself (so it need not be written out):
    this plugin's lazy stacks, and zarr arrays at the top of a local store."""
    if isinstance(array, LazyStack):
        return str(array.path) if array.path.exists() else None
    store = getattr(array, "store", None)
    root = getattr(store, "root", None)  # zarr 3's LocalStore
    if root is not None and type(array).__module__.startswith("zarr") and not getattr(array, "path", ""):
        return str(root) if Path(str(root)).exists() else None
    return None


class JobFolder:
    """A temporary folder for one job's data; ``stage`` gives the child a path for every array."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))

    def stage(self, name: str, array: Any) -> str:
        """The array's own file where it has one, else a ``.npy`` here (memory-mapped by the child)."""
        found = source_path(array)
        if found is not None:
            return found
        path = self.path / f"{name}.npy"
        np.save(path, np.ascontiguousarray(np.asarray(array)), allow_pickle=False)
        return str(path)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def results_folder() -> Path:
    """A new folder for one auto-label result of this napari session (its stores back the result layers)."""
    from ..runtime.hardware import cache_folder

    folder = cache_folder() / RESULTS / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder


def remove_stale_results() -> list[Path]:
    """Result folders left by napari sessions that have ended (their process is gone); returns those removed."""
    from ..runtime.hardware import cache_folder

    removed = []
    for folder in (cache_folder() / RESULTS).glob("*-*"):
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# ----- the jobs -----------------------------------------------------------------------------------------------
def train_in_child(config: TrainConfig, data: dict[str, Any], *, models_dir: str | Path, resume: bool = False,
                   folder: JobFolder | None = None,
                   stop: threading.Event | None = None) -> Generator[Event, None, Path]:
    """``train`` as a child process: ``config`` is the job as recorded, ``data`` where its process reads image,
    labels, extra pairs and auto-labels (see ``JobFolder.stage``). Bad input the child finds is a ``ConfigError``
    naming the field, as in-process; a child that dies is a ``ChildDied`` saying how and what was kept."""
    folder = folder or JobFolder()
    try:
        job_file = folder.path / "job.json"
        job_file.write_text(json.dumps(job_document(config, data)))
        command = [*CLI, "train", "--config", str(job_file), "--models-dir", str(Path(models_dir).absolute()),
                   "--events", "jsonl", "--quiet", *(["--resume"] if resume else [])]
        what = "training processes" if _processes(config) > 1 else "training process"
        return (yield from follow_command(command, folder.path / "stderr.txt", stop or threading.Event(),
                                          what=what))
    finally:
        folder.close()


def label_in_child(model: str, image: str | Sequence[str], outputs: dict[str, str], options: list[str], *,
                   models_dir: str | Path, folder: JobFolder | None = None,
                   stop: threading.Event | None = None) -> Generator[Event, None, Any]:
    """``label_stack`` as a child process: the result stores named in ``outputs`` (``output``, and optionally
    ``probabilities`` and ``uncertainty``, all ``.zarr``; or ``output-dir`` for several images) are written by the
    child; ``options`` are further ``predict`` options (overlap, test-time augmentation, post-processing). Returns
    the child's last event."""
    folder = folder or JobFolder()
    images = [image] if isinstance(image, str) else list(image)
    try:
        command = [*CLI, "predict", "--model", model, *[a for path in images for a in ("--image", path)],
                   "--models-dir", str(Path(models_dir).absolute()), "--events", "jsonl", "--quiet"]
        for name, path in outputs.items():
            command += [f"--{name}", str(path)]
        return (yield from follow_command([*command, *options], folder.path / "stderr.txt",
                                          stop or threading.Event(), what="labelling process"))
    finally:
        folder.close()


@dataclass(frozen=True)
class StoredResult:
    """An auto-label result a child wrote. Lazy: its arrays are zarr stores in ``folder`` (the labels open for
    painting), beside the labels as the model gave them (``original``, read-only), kept for training on
    corrections. Not lazy: the arrays read into memory and the folder gone (``folder`` and ``original`` None)."""

    result: Any  # inference.label.LabelResult
    folder: Path | None
    original: Any


def _read_queue(path: Path) -> tuple | None:
    """The queue a child wrote (``predict --queue``), or None where it wrote none."""
    from ..inference.proofreading import queue_from_document

    return queue_from_document(json.loads(path.read_text())) if path.is_file() else None


def labelled_in_child(record: Any, image: str, options: list[str], *, models_dir: str | Path,
                      probabilities: bool, uncertainty: bool, lazy: bool, folder: JobFolder | None = None,
                      stop: threading.Event | None = None) -> Generator[Event, None, Any]:
    """Auto-label in a child. The result follows its input: for a stack read lazily (a file, a zarr store) it stays
    zarr stores in a folder of this session (``results_folder``), so a result larger than memory works; for an
    in-memory image it is read back into memory. Returns a ``StoredResult``, or, when the job was cancelled, a
    ``LabelResult`` without labels (nothing is kept), as ``label_stack`` returns."""
    from ..inference.label import LabelResult

    results = results_folder()
    outputs = {"output": str(results / "labels.zarr")}
    if probabilities:
        outputs["probabilities"] = str(results / "probabilities.zarr")
    if uncertainty:
        outputs["uncertainty"] = str(results / "uncertainty.zarr")
        if record.config.mode == "instance":  # the proofreading queue, likeliest error first (proofreading.py)
            outputs["queue"] = str(results / "queue.json")
    try:
        last = yield from label_in_child(record.name, image, outputs, options, models_dir=models_dir, folder=folder,
                                         stop=stop)
        if last is None or last.cancelled:
            shutil.rmtree(results, ignore_errors=True)
            return LabelResult(None, None, record, None, 0.0 if last is None else last.seconds)
        return _kept_result(results, record, last.objects, last.seconds, lazy=lazy,
                            queue=_read_queue(results / "queue.json"))
    except BaseException:
        shutil.rmtree(results, ignore_errors=True)
        raise


@dataclass(frozen=True)
class Relabelled:
    """One part of a round's relabelling, done: its labels (ids from 1, zero outside ``cores``) and the cores of
    the blocks it labelled. ``whole`` False: the blocks near the corrections, which come first; True: the whole
    stack, the round's final labels."""

    whole: bool
    labels: np.ndarray
    cores: tuple
    uncertainty: np.ndarray | None = None  # the new version's doubt inside ``cores`` (for the next queue)


def relabel_in_child(model: str, image: str, regions: list, options: list[str], *, models_dir: str | Path,
                     stop: threading.Event | None = None) -> Generator[Event | Relabelled, None, None]:
    """A proofreading round's relabelling as two ``predict`` children: the blocks meeting ``regions`` first
    (``--near``), then the whole stack; after each, a ``Relabelled`` for the dock to merge, with the labels'
    uncertainty (the next round's queue ranks by it).

    The second part is the whole stack, not the blocks the first left out: a block cut to a small box sees
    objects of 200-300 pixels only in part, and its watershed cut and merged them differently from the
    neighbouring blocks, so joining the two parts across their faces lost matched objects (F1 outside the
    fixes 0.377 against 0.462 for a full relabel of the same round, chloroplast right half). The blocks left
    out cost about what the whole stack does (89-131 s against 89-125 s there: they need every window reaching
    into the first part's blocks too), so the final labels are simply a full relabel's."""
    import zarr

    folder = JobFolder()
    try:
        (folder.path / "near.json").write_text(json.dumps([[list(axis) for axis in r] for r in regions]))
        for whole in (False, True):
            part = folder.path / ("whole" if whole else "near")
            outputs = {"output": f"{part}.zarr", "cores": f"{part}-cores.json",
                       "uncertainty": f"{part}-uncertainty.zarr"}
            where = [] if whole else ["--near", str(folder.path / "near.json")]
            last = yield from label_in_child(model, image, outputs, [*options, *where], models_dir=models_dir,
                                             stop=stop)
            if last is None or last.cancelled:
                return
            cores = tuple(tuple(tuple(axis) for axis in core) for core in json.loads(Path(outputs["cores"]).read_text()))
            if cores:
                doubt = Path(outputs["uncertainty"])
                yield Relabelled(whole, np.asarray(zarr.open_array(store=outputs["output"], mode="r")), cores,
                                 np.asarray(zarr.open_array(store=str(doubt), mode="r")) if doubt.exists() else None)
    finally:
        folder.close()


def _kept_result(results: Path, record: Any, objects: int | None, seconds: float, *, lazy: bool,
                 queue: tuple | None = None) -> StoredResult:
    """What a child wrote into ``results`` (``labels.zarr`` and any maps), as the dock keeps it: zarr stores left
    in place for a lazy input, arrays in memory (and the folder gone) for an in-memory one."""
    import zarr

    from ..inference.label import LabelResult

    if not lazy:
        arrays = {name: np.asarray(zarr.open_array(store=str(results / f"{name}.zarr"), mode="r"))
                  for name in ("labels", "probabilities", "uncertainty") if (results / f"{name}.zarr").exists()}
        shutil.rmtree(results, ignore_errors=True)
        return StoredResult(LabelResult(arrays["labels"], arrays.get("probabilities"), record, objects, seconds,
                                        arrays.get("uncertainty"), queue=queue), None, None)
    # The model's own result stays beside the one the user will paint into (a copy on disk, not in memory).
    shutil.copytree(results / "labels.zarr", results / "original.zarr")
    labels = zarr.open_array(store=str(results / "labels.zarr"), mode="r+")
    opened = {name: zarr.open_array(store=str(results / f"{name}.zarr"), mode="r")
              for name in ("probabilities", "uncertainty") if (results / f"{name}.zarr").exists()}
    result = LabelResult(labels, opened.get("probabilities"), record, objects, seconds, opened.get("uncertainty"),
                         queue=queue)
    return StoredResult(result, results, zarr.open_array(store=str(results / "original.zarr"), mode="r"))


def labelled_many_in_child(record: Any, images: Sequence[str], options: list[str], *, models_dir: str | Path,
                           lazy: Sequence[bool] = (), output_dir: str | Path | None = None,
                           folder: JobFolder | None = None,
                           stop: threading.Event | None = None) -> Generator[Event, None, list[Any]]:
    """Auto-label several stacks in one child (``predict --image A --image B --output-dir``), one after another.
    With ``output_dir`` the results are the files written there (returns their paths); without, each result is
    kept as for one stack (``StoredResult``, lazy where ``lazy`` says its input is), in the order of ``images``.
    A stop ends the job after the stack in progress is cancelled; the stacks finished before it are returned."""
    target = Path(output_dir) if output_dir is not None else results_folder()
    form = "tif" if output_dir is not None else "zarr"
    finished: dict[int, StackFinished] = {}
    try:
        events = label_in_child(record.name, images, {"output-dir": str(target)}, [*options, "--format", form],
                                models_dir=models_dir, folder=folder, stop=stop)
        for event in events:
            if isinstance(event, StackFinished) and not event.cancelled:
                finished[event.index] = event
            yield event
        if output_dir is not None:
            return [Path(finished[i].output) for i in sorted(finished)]
        kept = []
        for i in sorted(finished):  # each result in a folder of its own, dropped when its layer goes
            own = results_folder()
            shutil.move(finished[i].output, own / "labels.zarr")
            kept.append(_kept_result(own, record, finished[i].objects, finished[i].seconds,
                                     lazy=bool(lazy[i]) if i < len(lazy) else False))
        return kept
    finally:
        if output_dir is None:
            shutil.rmtree(target, ignore_errors=True)


# Kept for the name the dock and the tests knew: a job of several processes is a child job like any other.
def train_in_processes(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *, extra_pairs=(),
                       auto_labels: np.ndarray | None = None, models_dir: str | Path | None = None,
                       stop: threading.Event | None = None) -> Generator[Event, None, Path]:
    """``train``'s signature over ``train_in_child``: the arrays are staged into a job folder first."""
    if models_dir is None:
        from ..models.store import default_models_dir

        models_dir = default_models_dir()
    folder = JobFolder()
    data: dict[str, Any] = {"image": folder.stage("image", image), "labels": folder.stage("labels", labels),
                            "extra_images": [folder.stage(f"image_{i + 2}", a) for i, (a, _) in enumerate(extra_pairs)],
                            "extra_labels": [folder.stage(f"labels_{i + 2}", b) for i, (_, b) in enumerate(extra_pairs)]}
    if config.touched_only and auto_labels is not None:
        data["auto_labels"] = folder.stage("auto_labels", auto_labels)
    return (yield from train_in_child(config, data, models_dir=models_dir, folder=folder, stop=stop))


# ----- following a child --------------------------------------------------------------------------------------
def follow_command(command: list[str], stderr_path: Path, stop: threading.Event, *,
                   what: str = "training processes") -> Generator[Event, None, Any]:
    """Run ``command`` (a ``train`` or ``predict`` line with ``--events jsonl``) and yield its events until it
    ends; ``stop`` set asks it to stop. Returns a training job's model folder, or a labelling job's last event."""
    with open(stderr_path, "w+", encoding="utf-8", errors="replace") as stderr:
        # Its own process group: the launcher's ranks can be ended together if the launcher itself will not end.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                   text=True, encoding="utf-8", errors="replace", start_new_session=True,
                                   env={**os.environ, NICENESS_ENV: str(CHILD_NICENESS)})
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
        if job.labelling:
            if isinstance(job.last, (LabelFinished, StackFinished)):  # one stack, or the last of many
                return job.last
        elif folder is not None:
            return folder
        raise _died(job, what, _tail(stderr))


@dataclass
class _Job:
    """What the follower and its guard thread share."""

    process: subprocess.Popen
    stop: threading.Event
    model_dir: Path | None = None  # known from a training job's ``started`` line
    labelling: bool = False  # a ``predict`` job: stopped by signal, no model folder
    last: Any = None  # the newest event
    iteration: int = 0  # the newest iteration a training job reported
    checkpoint: int | None = None  # the newest checkpoint it reported
    output_over: bool = False  # the job's output ended: it is exiting by itself
    leaving: threading.Event = field(default_factory=threading.Event)  # the follower stopped reading


def _events(job: _Job) -> Generator[Event, None, Path | None]:
    events = follow(job.process.stdout)
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        job.last = event
        if isinstance(event, Started):
            job.model_dir = event.model_dir
            job.iteration = event.start_iteration
            if event.start_iteration:
                job.checkpoint = event.start_iteration  # a resumed job starts from a checkpoint
        elif isinstance(event, LabelStarted):
            job.labelling = True
        elif isinstance(event, CheckpointSaved) and event.reason != "best":
            job.checkpoint = event.iteration
        if hasattr(event, "iteration") and not isinstance(event, CheckpointSaved):
            job.iteration = max(job.iteration, int(event.iteration))
        yield event


def _died(job: _Job, what: str, tail: str) -> ChildDied:
    """What a user needs to hear when the child ended without finishing: how, what it said last, what is kept."""
    code = job.process.returncode
    was = "were" if what.endswith("processes") else "was"
    how = f"{was} killed by {_signal_name(-code)}" if code < 0 else f"ended with exit status {code}"
    if code == -signal.SIGSEGV or code == -signal.SIGABRT or code == -signal.SIGBUS:
        how += " (a crash inside the process; napari and your layers are untouched)"
    elif code == -signal.SIGKILL:
        how += " (the system may have run out of memory)"
    if job.labelling or (job.model_dir is None and "label" in what):
        kept = "; nothing was added to the viewer"
    elif job.checkpoint is not None:
        kept = (f". The last checkpoint kept is iteration {job.checkpoint} of {job.model_dir.name!r}: Resume "
                "continues from it")
    elif job.model_dir is not None:
        kept = ". No checkpoint was written yet, so there is nothing to resume: train again"
    else:
        kept = ""
    where = f" at iteration {job.iteration}" if job.iteration and not job.labelling else ""
    return ChildDied(f"The {what} {how}{where}{tail}{kept}.", exitcode=code, last_checkpoint=job.checkpoint)


def _guard(job: _Job) -> None:
    """Beside the follower, which waits on the job's output: a stop request (or a follower that left while the
    job runs) becomes the STOP file once a training job's folder is known, or SIGTERM for a labelling job; a job
    still running ``STOP_GRACE_S`` later gets SIGTERM, then its process group is killed. Never a hang, and never
    a process left behind."""
    process = job.process
    while process.poll() is None and not job.stop.is_set() and not job.leaving.is_set():
        time.sleep(POLL_S)
    asked, touched = time.monotonic(), False
    while process.poll() is None and time.monotonic() - asked < STOP_GRACE_S:
        wanted = job.stop.is_set() or not job.output_over
        if wanted and not touched:
            if job.model_dir is not None:
                stop_file(job.model_dir).touch()
                touched = True
            elif job.labelling or not job.output_over:
                process.send_signal(signal.SIGTERM)  # predict cancels on SIGTERM; train stops with a checkpoint
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
    return "; its last lines: " + " | ".join(lines[-STDERR_LINES:]) if lines else \
        " without writing anything on its error output"


def _signal_name(number: int) -> str:
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def _processes(config: TrainConfig) -> int:
    from ..runtime.hardware import processes_per_machine

    return processes_per_machine(config)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
