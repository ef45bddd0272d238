"""What a long job tells its observers, as small immutable values.

Training (and later auto-labelling) are generators of these events; the dock widget, the command line and the
tests consume the same stream, so nothing about progress reporting lives in any one front end. Arrays in events
are fresh numpy copies, never tensors still being trained, so they may cross threads safely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np


@dataclass(frozen=True)
class Started:
    model_dir: Path
    total_iterations: int
    start_iteration: int
    window: tuple[int, ...]
    device: str
    validation_region: tuple[tuple[int, int], ...]  # (start, stop) per (z, y, x) axis of the given stack
    precision: str = "fp32"  # of the forward pass: "fp32" or "bf16" (see hardware.py)
    batch_hint: int | None = None  # on a GPU: about how many windows per batch its free memory holds
    precision_reason: str = ""  # why this format: verified here, fallen back from a crash, or asked for
    plan: tuple[str, ...] = ()  # what the plan chose for the fields left empty, and why (planning/plan.py)
    batch_size: int | None = None  # windows per batch, as the job runs (given or planned)
    lr: float | None = None  # base learning rate, as the job runs
    disk_bytes: int | None = None  # about the most disk the job's checkpoints take at once (ModelWriter.planned_bytes)
    validation_note: str = ""  # what validation holds out (training/holdout.py), or why the job cannot validate


@dataclass(frozen=True)
class Progress:
    iteration: int
    total: int
    loss: float
    lr: float
    seconds_per_iteration: float
    data_seconds: float  # of the last iteration, spent waiting for windows rather than computing
    eta_seconds: float | None


@dataclass(frozen=True)
class Validation:
    iteration: int
    score: float  # the one number to watch: mean IoU (semantic) or matched-object F1 at IoU 0.5 (instance)
    # The first part's metrics, and each part's score: learned_score (the job's own held-out labels) and,
    # where the original pair is given, kept_score (the lineage's block there); ``score`` is their mean.
    metrics: dict[str, float] = field(default_factory=dict)
    is_best: bool = False


def parts_text(metrics: dict[str, float]) -> str:
    """A validation's part scores in words ('' for a job with one part): what a job learned and what it kept."""
    if "kept_score" not in metrics:
        return ""
    learned = metrics.get("learned_score")
    words = [] if learned is None else [f"learned {learned:.3f}"]
    return " (" + ", ".join([*words, f"kept {metrics['kept_score']:.3f}"]) + ")"


@dataclass(frozen=True)
class Preview:
    """Predictions on the validation region, placed by ``offset`` (z, y, x) in the given stack."""

    iteration: int
    probabilities: np.ndarray  # (K, Z, Y, X) float32 in [0, 1]
    labels: np.ndarray  # (Z, Y, X) integer: original class values (semantic) or object ids (instance)
    offset: tuple[int, int, int]
    channel_names: tuple[str, ...]


@dataclass(frozen=True)
class ViewPreview:
    """Predictions where the user looks (training/view.py), placed by ``offset`` (z, y, x) in the given stack;
    ``seconds`` is what predicting them took from training."""

    iteration: int
    probabilities: np.ndarray  # (K, Z, Y, X) float32 in [0, 1]
    labels: np.ndarray  # (Z, Y, X) integer: original class values (semantic) or object ids (instance)
    offset: tuple[int, int, int]
    channel_names: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class CheckpointSaved:
    iteration: int
    path: Path
    reason: str  # "save" (every iteration_save), "best", "stop" or "final"


@dataclass(frozen=True)
class Finished:
    iteration: int
    model_dir: Path
    stopped: bool  # a stop request or the time limit ended the job before its iteration total
    reason: str  # "completed", "stopped" or "time limit"
    best_score: float | None


Event = Started | Progress | Validation | Preview | ViewPreview | CheckpointSaved | Finished


# ----- auto-labelling -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelStarted:
    model: str
    shape: tuple[int, ...]  # of the image as given
    blocks: int
    windows: int  # sliding-window positions in all blocks together (x test-time variants for the work)
    device: str
    precision: str


@dataclass(frozen=True)
class LabelProgress:
    windows_done: int
    windows: int
    blocks_done: int
    blocks: int
    stage: str  # "predict" while windows run, "join" while object ids are joined across blocks


@dataclass(frozen=True)
class LabelFinished:
    seconds: float
    objects: int | None  # instance mode: objects in the result
    cancelled: bool


LabelEvent = LabelStarted | LabelProgress | LabelFinished


# ----- auto-labelling many stacks in one job (inference/many.py) -------------------------------------------------
@dataclass(frozen=True)
class StackStarted:
    """Stack ``index`` (0-based) of ``stacks`` begins; its own Label* events follow."""

    index: int
    stacks: int
    source: str  # the input as the user named it (a file or a folder of slices)
    output: str


@dataclass(frozen=True)
class StacksProgress:
    """After each of a stack's progress events: its own share done and the whole job's, both 0..1."""

    index: int
    stacks: int
    stack_done: float
    overall_done: float


@dataclass(frozen=True)
class StackFinished:
    index: int
    stacks: int
    output: str
    seconds: float
    objects: int | None
    cancelled: bool


StacksEvent = StackStarted | StacksProgress | StackFinished


Result = TypeVar("Result")


def run_to_end(events: Generator[Any, None, Result]) -> tuple[Result, list[Any]]:
    """Drain a job's generator (tests, scripts): what it returns and every event it yielded."""
    seen: list[Any] = []
    while True:
        try:
            seen.append(next(events))
        except StopIteration as done:
            return done.value, seen


StopSignal = threading.Event | Callable[[], bool] | None  # how a front end asks a job to stop


def stop_requested(stop: StopSignal) -> bool:
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())
