"""A job's events as JSON lines, for a program following it from another process (the dock follows a job
of several processes, or its job process, this way).

- ``napari-plantbio-train train ... --events jsonl`` prints one JSON object per line on stdout, and nothing
  else there (``event_record``): ``{"event": "started" | "progress" | "validation" | "preview" | "view_preview" |
  "checkpoint" | "finished", ...}`` (``predict ... --events jsonl``: ``"label_started" | "label_progress" |
  "label_finished"``) with the fields of the event classes in ``job/events.py`` (paths as absolute strings,
  tuples as lists). A preview's arrays are written by rank 0 as ``.npy`` files in ``<model folder>/previews/``
  (the two newest of each kind are kept; a view preview's are named ``view_*``) and the line carries their paths
  (``probabilities``, ``labels``). A job that fails prints ``{"event": "error", "field": ... or null,
  "message": ...}`` and exits non-zero (2: bad input, 1: a rank died or the disk is full, 130: aborted).
  ``follow(lines)`` turns the lines back into the event objects ``train`` yields (raising ``JobFailed`` on an
  error line), so a follower handles the same events as the dock does in-process.
- Stop: create the file ``<model folder>/STOP`` (``stop_file``; rank 0 polls it every iteration and removes
  it when the job ends), or send SIGINT/SIGTERM to the launching process. A stopped job still ends with its
  ``finished`` line (reason ``"stopped"``), then exits 0 (STOP file) or 128 + the signal (143: SIGTERM): a
  follower takes the ``finished`` line, not the exit status, as the job's end.
- Priority: a follower that must stay responsive (the viewer) sets ``PLANTBIO_NICENESS`` in the job's
  environment; the program lowers its own priority by that much before it computes (runtime.hardware).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..job.events import (CheckpointSaved, Event, Finished, LabelFinished, LabelProgress, LabelStarted, Preview,
                          StackFinished, StacksProgress, StackStarted,
                          Progress, Started, Validation, ViewPreview)
from .files import atomic_write

STOP_FILE = "STOP"
NICENESS_ENV = "PLANTBIO_NICENESS"
PREVIEWS_KEPT = 2


class JobFailed(Exception):
    """A followed job ended with an error line; ``field`` names the job field at fault, where one is.

    Not a RuntimeError, nor are the package's other errors: napari's worker (superqt) takes a RuntimeError
    from a job for a deleted Qt object and drops it without telling the dock that the job ended."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# ----- stopping and following a job from another process -------------------------------------------------------
def stop_file(model_folder: str | Path) -> Path:
    """Creating this file asks a running job to stop at the next iteration with a checkpoint."""
    return Path(model_folder) / STOP_FILE


def event_record(event: Event, previews: Path | None = None) -> dict[str, Any]:
    """One event as plain JSON values; a preview's arrays go to ``.npy`` files in ``previews`` (the model
    folder's ``previews/``), of which the newest ``PREVIEWS_KEPT`` iterations are kept."""
    kind = _KINDS[type(event)]
    record: dict[str, Any] = {"event": kind}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if isinstance(value, np.ndarray):
            if previews is None:
                raise ValueError("a preview needs a folder to write its arrays to")
            value = str(_write_preview(previews, event.iteration, _ARRAY_PREFIX.get(type(event), "") + item.name,
                                       value))
        record[item.name] = _plain(value)
    return record


def event_from_record(record: Mapping[str, Any]) -> Event:
    """The event a JSON line describes (a preview's arrays read back from their files)."""
    kind = record.get("event")
    cls = {name: cls for cls, name in _KINDS.items()}.get(kind)
    if cls is None:
        raise ValueError(f"{kind!r} is not an event kind ({', '.join(_KINDS.values())})")
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name not in record:
            continue
        value = record[item.name]
        if item.name in ("model_dir", "path"):
            value = Path(value)
        elif cls in _ARRAY_PREFIX and item.name in ("probabilities", "labels"):
            value = np.load(value, allow_pickle=False)
        elif isinstance(value, list):
            value = _tuples(value)
        values[item.name] = value
    return cls(**values)


def follow(lines: Iterable[str]) -> Generator[Event, None, Path | None]:
    """The events of a job from its ``--events jsonl`` output, e.g. a subprocess's stdout read line by line.

    Returns the model folder once the job has finished (None if the output ended without a ``finished``
    line: look at the process's exit status). Lines that are not JSON objects are skipped, and so is a preview
    whose files were already replaced by newer ones (a follower that fell behind).
    """
    folder = None
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "error":
            raise JobFailed(str(record.get("message")), record.get("field"))
        try:
            event = event_from_record(record)
        except FileNotFoundError:
            continue
        if isinstance(event, Finished):
            folder = event.model_dir
        yield event
    return folder


_KINDS: dict[type, str] = {Started: "started", Progress: "progress", Validation: "validation", Preview: "preview",
                           ViewPreview: "view_preview",
                           CheckpointSaved: "checkpoint", Finished: "finished", LabelStarted: "label_started",
                           LabelProgress: "label_progress", LabelFinished: "label_finished",
                           StackStarted: "stack_started", StacksProgress: "stacks_progress",
                           StackFinished: "stack_finished"}


_ARRAY_PREFIX: dict[type, str] = {Preview: "", ViewPreview: "view_"}  # of their files: each kind keeps its newest


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.absolute())  # a follower may run in another working directory
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuples(value: list[Any]) -> tuple[Any, ...]:
    return tuple(_tuples(v) if isinstance(v, list) else v for v in value)


def _write_preview(folder: Path, iteration: int, name: str, array: np.ndarray) -> Path:
    """Written whole or not at all (files.atomic_write), so a follower never reads half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"iter_{iteration:07d}_{name}.npy"
    atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))
    # Per array name: a view preview asked between validations must not push out the validation preview's files.
    named = (p.name.split("_", 2) for p in folder.glob("iter_*_*.npy"))
    iterations = sorted({parts[1] for parts in named if parts[2] == f"{name}.npy"})
    for old in iterations[:-PREVIEWS_KEPT]:
        (folder / f"iter_{old}_{name}.npy").unlink(missing_ok=True)
    return path
