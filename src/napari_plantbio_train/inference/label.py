"""Auto-labelling a stack of any size with a named model.

The stack is read and labelled block by block (see ``blockwise``), so memory follows the block size, not the
stack: a stack larger than RAM, held as zarr or dask, is labelled with the same call as a small numpy crop.
Blocks run on a ``concurrent.futures`` executor: a local thread pool by default, or a dask.distributed
cluster's executor when a scheduler address is given (each worker then loads the model from the shared models
folder and writes its blocks into the shared output store). ``label_stack`` is a generator of events, like
training, so the command line, the dock widget and the tests consume the same stream and can cancel it.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.arrays import Output, check_target, read_block, stack_shape, write_block
from ..io.checks import check_finite, check_stack
from ..io.files import DiskFull, disk_full
from ..io.stacks import StackError
from ..job.config import ConfigError
from ..job.events import LabelEvent, LabelFinished, LabelProgress, LabelStarted, StopSignal, run_to_end, stop_requested
from ..job.kinds import POSTPROCESS_DEFAULTS, PRECISIONS
from ..models.normalisation import Normalisation
from ..models.store import ModelRecord, ModelStore
from ..runtime.hardware import Probe, Verdict, autocast_for, choose_precision, resolve_device, usable
from . import blockwise
from .predictor import labels_from_probabilities, make_predictor
from .sliding import TTA_CHOICES, WindowCache, predict_stack, window_origins, with_tta
from .uncertainty import entropy_map


Region3 = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


class LabelCancelled(Exception):
    """Raised inside a block when the user asked to stop."""


@dataclass(frozen=True)
class LabelSettings:
    """How to run a model over a stack; the model itself brings its window, normalisation and classes."""

    # 0.5 (as nnU-Net), though 0.25 labels about twice as fast: on the chloroplast stack's unseen parts (AMD EPYC,
    # 2 cores) four models scored matched-object F1 0.565/0.468/0.458/0.211 at 0.5 against 0.417/0.410/0.417/0.207
    # at 0.25 (foreground IoU 0.81 against 0.755 for the first), 211 s against 90 s on the 25.7M-voxel half.
    overlap: float = 0.5
    tta: int = 0  # test-time variants averaged: 0 (none), 4 (flips) or 8 (flips and transposes)
    batch_size: int | None = None  # windows per forward pass; None: the model's samples per batch
    precision: str = "auto"  # bf16 where native and seen to work here (hardware.py), else fp32
    device: str | None = None  # "cpu", "cuda" or "cuda:N"; None: the first GPU when there is one
    which: str = "best"  # checkpoint: "best" (best smoothed validation score) or "last"
    postprocess: dict[str, float] = field(default_factory=dict)  # overrides of the model's watershed settings
    block_voxels: int = 32 * 2**20  # largest block (windows included) held in memory at once
    halo: int | None = None  # in-plane context around instance blocks in pixels; None: half the window
    workers: int = 1  # blocks run at once on the local executor
    scheduler: str | None = None  # address of a dask.distributed scheduler, e.g. "tcp://10.0.0.5:8786"

    def problems(self, window: tuple[int, ...]) -> list[ConfigError]:
        out = []
        if not 0 <= self.overlap < 1:
            out.append(ConfigError("overlap", f"must be at least 0 and below 1, got {self.overlap}"))
        if self.tta not in TTA_CHOICES:
            out.append(ConfigError("tta", f"must be one of {TTA_CHOICES}, got {self.tta}"))
        elif self.tta == 8 and window[-1] != window[-2]:
            out.append(ConfigError("tta", f"8 variants transpose y and x, which needs the model's window to be "
                                          f"square, not {tuple(window)}: use 4"))
        if self.batch_size is not None and self.batch_size < 1:
            out.append(ConfigError("batch_size", f"must be at least 1, got {self.batch_size}"))
        if self.precision not in PRECISIONS:
            out.append(ConfigError("precision", f"must be one of {PRECISIONS}, got {self.precision!r}"))
        if self.which not in ("best", "last"):
            out.append(ConfigError("which", f"must be 'best' or 'last', got {self.which!r}"))
        if self.block_voxels < math.prod(window):
            out.append(ConfigError("block_voxels", f"must hold at least one window ({math.prod(window)} voxels)"))
        if self.halo is not None and self.halo < 0:
            out.append(ConfigError("halo", f"must not be negative, got {self.halo}"))
        if self.workers < 1:
            out.append(ConfigError("workers", f"must be at least 1, got {self.workers}"))
        for key, value in self.postprocess.items():
            if key not in POSTPROCESS_DEFAULTS:
                out.append(ConfigError(key, f"is not a post-processing setting ({', '.join(POSTPROCESS_DEFAULTS)})"))
            elif not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                out.append(ConfigError(key, f"must be a non-negative number, got {value!r}"))
            elif key == "min_confidence" and value > 1:
                out.append(ConfigError(key, f"is a probability: at most 1, got {value!r}"))
        return out


MAX_COUNTED_WINDOWS = 200_000  # windows of a labelling whose uses are counted for sharing (a few tens of MB)


@dataclass(frozen=True)
class LabelResult:
    labels: Any  # numpy array, zarr array, or the path of the written file
    probabilities: Any | None
    record: ModelRecord
    objects: int | None
    seconds: float
    uncertainty: Any | None = None  # entropy of the probabilities, 0..1 (see uncertainty.py)
    novelty: np.ndarray | None = None  # the "new tissue" map, one value per tile (proofreading.with_queue)
    queue: tuple | None = None  # proofreading.QueueEntry, likeliest error first (proofreading.with_queue)
    cores: tuple | None = None  # (start, stop) per (z, y, x) axis of each block written (a `near` run: some)


@dataclass(frozen=True)
class _Job:
    """Everything a block needs, as plain picklable values (a cluster worker rebuilds the model from it)."""

    models_root: str
    name: str
    which: str
    mode: str
    dims: str
    window: tuple[int, ...]
    window3: tuple[int, int, int]
    overlap: float
    batch_size: int
    tta: int
    device: str
    precision: str
    isa_limit: str | None  # oneDNN's ISA limit the precision verdict needs (bf16 with AMX off), if any
    normalisation: dict[str, float]
    classes: list[int] | None
    postprocess: dict[str, float]
    model_stamp: float  # modification time of model.json: a retrained model is not served from a stale cache


def label_stack(model: str, image: Any, *, models_dir: str | Path | None = None, output: Any = None,
                probabilities: Any = None, uncertainty: Any = None, settings: LabelSettings | None = None,
                overwrite: bool = False, stop: StopSignal = None, near: Sequence[Region3] | None = None,
                far: bool = False) -> Generator[LabelEvent, None, LabelResult]:
    """Label `image` ((Y, X) or (Z, Y, X): numpy, dask or zarr) with the named model; yields events.

    `output` is None (a numpy array is returned), an array to fill, or a ``.zarr`` / ``.tif`` path.
    `probabilities` is None (not kept), True (in memory) or a ``.zarr`` path / array for the (K, ...) maps;
    `uncertainty` likewise for a map of the model's doubt, shaped like the image.

    `near` ((start, stop) per (z, y, x) axis, for each region) labels only blocks whose cores cover the regions
    (with `far`, only the others; blockwise.plan_around lays both out): a proofreading round relabels around
    the corrections first and the rest afterwards. Inside those cores the probabilities are a whole-stack run's
    (ids numbered from 1 among the blocks labelled); the result's `cores` says which were written.
    """
    started = time.perf_counter()
    settings = settings or LabelSettings()
    # Every argument is checked before any work (the model is not even read yet): a wrong output name or a
    # colour image is one line, not a traceback after minutes of computing.
    check_stack(image, field="image")
    for name, target in (("output", output), ("probabilities", probabilities), ("uncertainty", uncertainty)):
        check_target(target, field=name, overwrite=overwrite)
    store = ModelStore(models_dir)
    record = store.record(model)
    shape = stack_shape(image)
    job = _make_job(record, store, settings, shape, image)
    window3 = job.window3
    halo = _halo(settings.halo, window3, record, float(job.postprocess["min_confidence"]))
    planned = blockwise.plan_blocks(shape, window3, job.overlap, halo, settings.block_voxels)
    if near is None:
        blocks = planned
    else:
        inside, outside = blockwise.plan_around(shape, window3, job.overlap, halo, settings.block_voxels, near)
        blocks = outside if far else inside
    windows = {b.index: blockwise.count_windows(b.reach, window3, job.overlap) for b in blocks}
    total_windows = sum(windows.values())

    if settings.scheduler and (output is None or isinstance(output, np.ndarray)):
        raise ConfigError("output", "a cluster writes its result into a file the workers can reach: give an "
                                    "output .zarr or .tif path")
    image_shape = tuple(int(s) for s in image.shape)
    chunks = tuple(b - a for a, b in planned[0].core)[-len(image_shape):]
    labels_dtype = np.uint32 if job.mode == "instance" else np.min_scalar_type(max(job.classes or [0]))
    voxel_size = tuple(record.config.voxel_size)
    labels_out = Output(output, image_shape, labels_dtype, chunks, overwrite=overwrite, voxel_size=voxel_size)
    probs_out: Output | None = None
    unc_out: Output | None = None
    try:
        if uncertainty is not None:
            unc_out = Output(None if uncertainty is True else uncertainty, image_shape, np.float32, chunks,
                             overwrite=overwrite)
        if probabilities is not None:
            k = 2 if job.mode == "instance" else len(job.classes or [])
            probs_out = Output(None if probabilities is True else probabilities, (k, *image_shape), np.float32,
                               (1, *chunks), overwrite=overwrite)
        yield LabelStarted(model, image_shape, len(blocks), total_windows, job.device, job.precision)
        objects = yield from _run(job, blocks, windows, image, labels_out, probs_out, unc_out, settings, stop)
        result = LabelResult(labels_out.finish(), probs_out.finish() if probs_out is not None else None, record,
                             objects, time.perf_counter() - started,
                             unc_out.finish() if unc_out is not None else None,
                             cores=tuple(b.core for b in blocks))
    except BaseException as exc:
        outputs = [out for out in (labels_out, probs_out, unc_out) if out is not None]
        for out in outputs:
            out.abort()
        if isinstance(exc, StackError):  # the image file failed while being read (cut short, damaged)
            raise ConfigError("image", str(exc)) from None
        cause = disk_full(exc)
        if cause is not None:
            written = next((o.path for o in outputs if o.path is not None), Path("."))
            where = exc.path if isinstance(exc, DiskFull) else written
            needed = sum(o.nbytes for o in outputs if o.path is not None)
            raise DiskFull(where, needed, cause, "nothing was written (the partial results were removed)") from None
        if not isinstance(exc, LabelCancelled):
            raise
        # Nothing half-done is returned or left on disk: a cancelled run ends like one that never started.
        seconds = time.perf_counter() - started
        yield LabelFinished(seconds, None, cancelled=True)
        return LabelResult(None, None, record, None, seconds)
    yield LabelFinished(result.seconds, objects, cancelled=False)
    return result


def _halo(halo_xy: int | None, window3: tuple[int, int, int], record: ModelRecord,
          min_confidence: float) -> tuple[int, int, int]:
    """Context around each block. Semantic labels are per voxel and need none, unless a confidence floor judges
    whole regions (semantic.py). Instance labels need the objects cut by a block edge seen whole enough from both
    sides to be split the same way: half a window in-plane (a window is sized to hold objects) joined every object
    cut by an edge of real chloroplast blocks, where a quarter window left two of ten objects split in two. A
    semantic region that reaches past the halo is judged on what each block sees of it."""
    if record.config.mode != "instance" and not min_confidence:
        return (0, 0, 0)
    if halo_xy is None:
        halo_xy = max(window3[1], window3[2]) // 2
    return (window3[0] // 2 if record.config.spatial_dims == 3 else 0, halo_xy, halo_xy)


def check_fits(record: ModelRecord, settings: LabelSettings, image: Any) -> None:
    """The rules between a model, the settings and an image that need no work, so a job of many stacks refuses a
    bad one before labelling the first."""
    if len(image.shape) == 2 and record.config.spatial_dims == 3:
        raise ConfigError("image", f"model {record.name!r} is a 3D model and needs a stack; this is a single 2D "
                                   f"image of shape {tuple(image.shape)}: use a 2D model")
    problems = settings.problems(tuple(int(w) for w in record.window))
    if problems:
        raise problems[0]


def _make_job(record: ModelRecord, store: ModelStore, settings: LabelSettings, shape: tuple[int, int, int],
              image: Any) -> _Job:
    config = record.config
    check_fits(record, settings, image)
    window = tuple(int(w) for w in record.window)
    device = resolve_device(settings.device)
    window3 = window if len(window) == 3 else (1, *window)
    postprocess = {**POSTPROCESS_DEFAULTS, **(record.postprocess or {}), **settings.postprocess}
    batch = int(settings.batch_size or config.batch_size)
    verdict = usable(choose_precision(settings.precision, device, Probe(record.network, window, batch, config.mode)))
    return _Job(models_root=str(store.root), name=record.name, which=settings.which, mode=config.mode,
                dims=config.dims, window=window, window3=window3,  # type: ignore[arg-type]
                overlap=float(settings.overlap), batch_size=batch, tta=settings.tta, device=str(device),
                precision=verdict.precision, isa_limit=verdict.isa_limit,
                normalisation=dict(record.normalisation), classes=record.classes, postprocess=postprocess,
                model_stamp=(record.folder / "model.json").stat().st_mtime)


def _run(job: _Job, blocks: list[blockwise.Block], windows: dict, image: Any, labels_out: Output,
         probs_out: Output | None, unc_out: Output | None, settings: LabelSettings,
         stop: StopSignal) -> Generator[LabelEvent, None, int | None]:
    """Submit every block, report progress as windows finish, then join object ids across blocks."""
    beside = blockwise.neighbours(blocks) if job.mode == "instance" else {}
    remote = settings.scheduler is not None
    # Local blocks share the windows their reaches have in common (a cluster's workers cannot): at most one
    # block's worth of outputs is kept, and counting uses is left to stacks of moderate size (a count per window).
    shareable = not remote and len(blocks) > 1 and sum(windows.values()) <= MAX_COUNTED_WINDOWS
    cache = WindowCache((origin for b in blocks for origin in window_origins(b.reach, job.window3, job.overlap)),
                        most=max(1, settings.block_voxels // math.prod(job.window3))) if shareable else None
    for name, out in (("probabilities", probs_out), ("uncertainty", unc_out)):
        if out is not None and remote and isinstance(out.array, np.ndarray):
            raise ConfigError(name, "a cluster writes its maps into a .zarr path the workers can reach, not into "
                                    "memory")
    executor, close, share = _executor(settings)
    image = share(image)
    messages: queue.SimpleQueue = queue.SimpleQueue()
    stop_event = threading.Event()
    progress_for = (lambda index: None) if remote else (lambda index: _Reporter(index, messages, stop_event))
    futures: dict[cf.Future, blockwise.Block] = {}
    results: dict[tuple[int, int, int], blockwise.BlockResult] = {}
    done_windows: dict[tuple[int, int, int], int] = {}
    total = sum(windows.values())
    try:
        for block in blocks:
            neighbours = beside.get(block.index, [])
            future = executor.submit(run_block, job, block, image, labels_out.array,
                                     probs_out.array if probs_out is not None else None, neighbours,
                                     progress_for(block.index), unc_out.array if unc_out is not None else None,
                                     cache)
            futures[future] = block
        pending = set(futures)
        while pending:
            if stop_requested(stop):
                stop_event.set()
                for future in pending:
                    future.cancel()
                raise LabelCancelled("labelling was cancelled")
            finished, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            updated = False
            while not messages.empty():
                index, count = messages.get()
                done_windows[index] = count
                updated = True
            for future in finished:
                result = future.result()  # re-raises a block's error here, in the caller's thread
                results[result.index] = result
                done_windows[result.index] = windows[result.index]
                updated = True
            if updated:
                yield LabelProgress(sum(done_windows.values()), total, len(results), len(blocks), "predict")
    finally:
        stop_event.set()
        close()
    if job.mode != "instance":
        return None
    yield LabelProgress(total, total, len(blocks), len(blocks), "join")
    return blockwise.join_ids(blocks, results, labels_out.array)


class _Reporter:
    """Progress callback of a local block: sends window counts to the caller and stops the block on request."""

    def __init__(self, index: tuple[int, int, int], messages: queue.SimpleQueue, stop: threading.Event) -> None:
        self.index, self.messages, self.stop = index, messages, stop

    def __call__(self, done: int, total: int) -> None:
        self.messages.put((self.index, done))
        if self.stop.is_set():
            raise LabelCancelled("labelling was cancelled")


def run_block(job: _Job, block: blockwise.Block, image: Any, labels_out: Any, probs_out: Any | None,
              neighbours: list[tuple[int, blockwise.Block]], progress: _Reporter | None = None,
              uncertainty_out: Any | None = None, cache: WindowCache | None = None) -> blockwise.BlockResult:
    """Predict one block's reach, label its context and write its core (runs on an executor thread or worker)."""
    if progress is not None and progress.stop.is_set():
        raise LabelCancelled("labelling was cancelled")
    predictor = _predictor(job)
    raw = read_block(image, blockwise.Block.region(block.reach))
    check_finite(raw, field="image")  # per block: a stack larger than memory is never read whole to check it
    normalised = Normalisation.from_dict(job.normalisation).apply(raw)
    spatial_dims = len(job.window)
    probs = predict_stack(predictor, normalised, spatial_dims=spatial_dims, window=job.window, overlap=job.overlap,
                          batch_size=job.batch_size, progress=progress, cache=cache,
                          origin=tuple(a for a, _ in block.reach))  # type: ignore[arg-type]
    del normalised, raw
    probs = probs[(slice(None), *block.within(block.reach, block.context))]
    core_in_context = block.within(block.context, block.core)
    if probs_out is not None:
        write_block_channels(probs_out, block, probs[(slice(None), *core_in_context)])
    if uncertainty_out is not None:
        write_block(uncertainty_out, blockwise.Block.region(block.core),
                    entropy_map(probs[(slice(None), *core_in_context)], job.mode))
    labels = labels_from_probabilities(probs, job.mode, job.dims, job.classes, _watershed_settings(job))
    del probs
    return blockwise.store_labels(block, labels, labels_out, neighbours, instance=job.mode == "instance")


def write_block_channels(array: Any, block: blockwise.Block, values: np.ndarray) -> None:
    region = blockwise.Block.region(block.core)
    if len(array.shape) == 3:  # (K, Y, X) maps of a 2D image
        array[:, region[1], region[2]] = values[:, 0]
    else:
        array[(slice(None), *region)] = values


def _watershed_settings(job: _Job) -> dict[str, float]:
    settings = dict(job.postprocess)
    for key in ("min_seed_size", "min_size"):
        settings[key] = int(settings[key])
    return settings


# ----- model cache and executors --------------------------------------------------------------------------------
_CACHE: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}
_CACHE_LOCK = threading.Lock()


def _predictor(job: _Job) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model as a probabilities function, loaded once per process (threads and cluster workers share it)."""
    key = (job.models_root, job.name, job.which, job.device, job.precision, job.tta, job.model_stamp)
    with _CACHE_LOCK:
        if key not in _CACHE:
            model, _record = ModelStore(job.models_root).load_model(job.name, job.which)
            device = torch.device(job.device)
            model = model.to(device)
            # A cluster worker is a process of its own: the verdict's ISA limit may not hold there.
            precision = usable(Verdict(job.precision, job.isa_limit, job.precision)).precision
            autocast = autocast_for(precision, device)
            _CACHE.clear()  # one model at a time: a session labels with one model, then maybe another
            _CACHE[key] = with_tta(make_predictor(model, job.mode, device, autocast), job.tta, job.window)
        return _CACHE[key]


def _executor(settings: LabelSettings) -> tuple[cf.Executor, Callable[[], None], Callable[[Any], Any]]:
    """(executor, close, share): `share` makes an input reachable by the blocks (a numpy array is sent to a
    cluster once, not once per block)."""
    if settings.scheduler is None:
        pool = cf.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="plantbio-label")
        return pool, lambda: pool.shutdown(wait=True, cancel_futures=True), lambda x: x
    try:
        from distributed import Client
    except ImportError as exc:
        raise ConfigError("scheduler", "a cluster address needs the 'distributed' package (pip install "
                                       "'dask[distributed]')") from exc
    try:
        client = Client(settings.scheduler, timeout=30, set_as_default=False)
    except OSError as exc:
        raise ConfigError("scheduler", f"cannot reach a dask scheduler at {settings.scheduler}: {exc}") from exc
    executor = client.get_executor(pure=False)

    def close() -> None:
        executor.shutdown(wait=False)
        client.close()

    def share(x: Any) -> Any:
        return client.scatter(x, broadcast=True) if isinstance(x, np.ndarray) else x

    return executor, close, share


__all__ = ["LabelSettings", "LabelResult", "label_stack", "run_to_end"]
