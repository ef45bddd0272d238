"""What the command line prints while a job runs: a progress bar and lines, or one JSON object per event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from ..io import wire
from ..io.files import size_text
from ..job.config import TrainConfig
from ..job.events import CheckpointSaved, Finished, Progress, Started, Validation, parts_text
from ..training.distributed import Rank


def _reporter(job: dict[str, Any], config: TrainConfig, rank: Rank, out: TextIO) -> Callable[[Any], None]:
    """What rank 0 does with each event: a progress bar and lines, or JSON lines; the other ranks say nothing."""
    if not rank.is_main:
        return lambda event: None
    if job["events"] == "jsonl":
        return JsonLines(out)
    bar = None if job["quiet"] else ProgressLine(out)

    def report(event: Any) -> None:
        _report(event, config, bar, out)
        if isinstance(event, Started) and rank.distributed:
            effective = event.batch_size * config.iteration_step * rank.world_size
            print(f"data-parallel over {rank.world_size} processes: effective batch {effective} (batch "
                  f"{event.batch_size} x iteration step {config.iteration_step} x {rank.world_size}), learning "
                  f"rate {event.lr:g}", file=out, flush=True)

    return report


class JsonLines:
    """``--events jsonl``: one JSON object per event; previews as .npy files in the model folder's previews/."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.previews = out, None

    def __call__(self, event: Any) -> None:
        if isinstance(event, Started):
            self.previews = event.model_dir / "previews"
        print(json.dumps(wire.event_record(event, self.previews)), file=self.out, flush=True)


def _report(event: Any, config: TrainConfig, bar: "ProgressLine | None", out: TextIO) -> None:
    if isinstance(event, Started):
        disk = "" if event.disk_bytes is None else (
            f"; checkpoints take up to {size_text(event.disk_bytes)} of disk (the newest {config.keep_checkpoints} "
            "periodic, the last and the best)")
        print(f"training {config.name!r} on {event.device} ({event.precision}) from iteration "
              f"{event.start_iteration} (window {event.window}); model folder {event.model_dir}{disk}", file=out,
              flush=True)
        if event.precision_reason:
            print(f"precision {event.precision_reason}", file=out, flush=True)
        if event.validation_note:
            print(event.validation_note, file=out, flush=True)
        for line in event.plan:
            print(line, file=out, flush=True)
        if event.batch_hint is not None:
            print(f"the GPU's free memory holds about {event.batch_hint} windows per batch "
                  f"(samples per batch: {event.batch_size})", file=out, flush=True)
    elif isinstance(event, Progress) and bar:
        bar.update(event)
    elif isinstance(event, Validation):
        _line(bar, out, f"iteration {event.iteration}: validation score {event.score:.4f}"
                        + parts_text(event.metrics) + (" (best)" if event.is_best else ""))
    elif isinstance(event, CheckpointSaved) and event.reason != "best":
        _line(bar, out, f"checkpoint ({event.reason}) at iteration {event.iteration}: {event.path}")
    elif isinstance(event, Finished):
        _line(bar, out, f"finished ({event.reason}) at iteration {event.iteration}; best score "
                        f"{'-' if event.best_score is None else f'{event.best_score:.4f}'}")


def _line(bar: "ProgressLine | None", out: TextIO, text: str) -> None:
    if bar:
        bar.clear()
    print(text, file=out, flush=True)


class ProgressLine:
    """A one-line progress bar redrawn in place, at most a few times a second."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width, self.drawn_at, self.length = out, width, 0.0, 0

    def update(self, event: Progress) -> None:
        eta = "" if event.eta_seconds is None else f" ~{_duration(event.eta_seconds)} left"
        self.draw(event.iteration, event.total, f"loss {event.loss:.4f} lr {event.lr:.2e} "
                                                f"{event.seconds_per_iteration:.2f}s/it{eta}")

    def draw(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if now - self.drawn_at < 0.25 and done != total:
            return
        self.drawn_at = now
        filled = int(self.width * done / max(1, total))
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {text}"
        self.out.write("\r" + text.ljust(self.length))
        self.out.flush()
        self.length = len(text)

    def clear(self) -> None:
        if self.length:
            self.out.write("\r" + " " * self.length + "\r")
            self.length = 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _error_event(out: TextIO, message: str, field: str | None) -> None:
    """The error as ``--events jsonl`` followers read it (io/wire.py's follow): which field, and why."""
    print(json.dumps({"event": "error", "field": field, "message": message}), file=out, flush=True)
