"""Auto-labelling many stacks in one job, one after another, for the command line and the dock alike.

A biologist's material is a folder of stacks, not one: this is ``label_stack`` run over each of them with one
model and one set of settings, results named after their inputs. Every input is read (lazily) and checked, the
model found and every output name checked before the first window runs, so a typo in the fifth file name is one
line at once, not an error after four stacks' work. Stacks run one after another (each already uses the machine's
cores or GPU fully); progress is reported per stack and for the whole job, weighted by the stacks' voxels.
"""

from __future__ import annotations

import glob
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.arrays import check_target
from ..io.checks import check_stack
from ..io.stacks import SUFFIXES, natural_key, read
from ..job.config import ConfigError
from ..job.events import (LabelEvent, LabelFinished, LabelProgress, StackFinished, StacksEvent, StacksProgress,
                          StackStarted, StopSignal, stop_requested)
from ..models.store import ModelStore
from .label import LabelSettings, check_fits, label_stack

OUTPUT_SUFFIXES = (".tif", ".zarr")
RESULT_MARK = "_labels"  # ends a result's name: NAME.tif -> NAME_labels.tif
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class StackJob:
    """One input of the job: what the user named, its lazily read data and where its labels go."""

    source: str
    data: Any
    output: Path


def expand_inputs(patterns: Sequence[str], field: str = "image") -> list[str]:
    """The stacks the user named: each pattern is a path (a folder of numbered slices stays one stack) or a quoted
    glob that this expands itself (a shell on Windows or a job script does not), in the order a person counts."""
    found: list[str] = []
    for pattern in patterns:
        if Path(pattern).exists() or not _GLOB_CHARS & set(pattern):
            found.append(pattern)  # a missing plain path is reported by the reader, naming it
            continue
        matches = sorted(glob.glob(pattern), key=lambda p: natural_key(Path(p).name))
        if not matches:
            raise ConfigError(field, f"{pattern!r} matches no file or folder")
        found.extend(matches)
    if not found:
        raise ConfigError(field, "at least one stack is needed")
    duplicates = sorted({p for p in found if found.count(p) > 1})
    if duplicates:
        raise ConfigError(field, f"{duplicates[0]} is named twice")
    return found


def stacks_in_folder(folder: str | Path, pattern: str = "*.tif") -> list[str]:
    """The stacks of a folder that ``pattern`` matches, in counting order, without the results a job over the
    same folder wrote beside them (``output_name``'s ``_labels``), so labelling a folder twice never labels its
    own results."""
    where = Path(folder)
    if not where.is_dir():
        raise ConfigError("folder", f"{where} is not a folder")
    found = [path for path in expand_inputs([str(where / pattern)], field="pattern")
             if not Path(output_name(path)).stem.endswith(f"{RESULT_MARK}{RESULT_MARK}")]
    if not found:
        raise ConfigError("pattern", f"{pattern!r} in {where} matches only results of an earlier job")
    return found


def output_name(source: str, suffix: str = ".tif") -> str:
    """The result's file name: the input's name without its format suffix, then ``_labels`` (so a result written
    beside its input never replaces it)."""
    name = Path(source.rstrip("/\\")).name
    for known in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(known):
            name = name[: -len(known)]
            break
    if name.lower().endswith(".ome"):
        name = name[:-4]
    return f"{name}{RESULT_MARK}{suffix}"


def plan_stacks(model: str, sources: Sequence[str], output_dir: str | Path, *,
                models_dir: str | Path | None = None, settings: LabelSettings | None = None,
                overwrite: bool = False, suffix: str = ".tif") -> list[StackJob]:
    """Every check of a many-stack job, before any work: inputs readable and labellable by the model, outputs
    named uniquely in a folder that exists (it is made when only it is missing), nothing replaced unless asked."""
    settings = settings or LabelSettings()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError("format", f"results are written as {' or '.join(OUTPUT_SUFFIXES)}, not {suffix!r}")
    folder = Path(output_dir)
    if not folder.is_dir():
        if not folder.parent.is_dir():
            raise ConfigError("output_dir", f"{folder}: neither it nor the folder {folder.parent} exists")
        if folder.exists():
            raise ConfigError("output_dir", f"{folder} is a file, not a folder")
    record = ModelStore(models_dir).record(model)
    jobs: list[StackJob] = []
    taken: dict[str, str] = {}
    for source in sources:
        try:
            data = read(source).data
        except (OSError, ValueError) as exc:  # StackError is a ValueError and names the file
            raise ConfigError("image", str(exc)) from None
        check_stack(data, field="image")
        check_fits(record, settings, data)
        name = output_name(source, suffix)
        if name in taken:
            raise ConfigError("image", f"{taken[name]} and {source} would both be written as {name}: rename one")
        taken[name] = source
        jobs.append(StackJob(source, data, folder / name))
    folder.mkdir(exist_ok=True)  # only now: a refused job leaves nothing behind but this empty folder at most
    for job in jobs:
        check_target(job.output, field="output_dir", overwrite=overwrite)
    return jobs


def label_stacks(model: str, jobs: Sequence[StackJob], *, models_dir: str | Path | None = None,
                 settings: LabelSettings | None = None, overwrite: bool = False,
                 stop: StopSignal = None) -> Generator[LabelEvent | StacksEvent, None, list[Path]]:
    """Label each planned stack (``plan_stacks``) in turn; yields each stack's own events between its
    ``StackStarted`` and ``StackFinished``, plus a ``StacksProgress`` after each of its progress events. A stop
    ends the job after the stack in progress is cancelled (nothing half-written); returns the outputs written."""
    voxels = [math.prod(int(s) for s in job.data.shape) for job in jobs]
    total = sum(voxels) or 1
    written: list[Path] = []
    for index, job in enumerate(jobs):
        if stop_requested(stop):
            break
        before = sum(voxels[:index])
        yield StackStarted(index, len(jobs), job.source, str(job.output))
        started = time.perf_counter()
        for event in label_stack(model, job.data, models_dir=models_dir, output=job.output, settings=settings,
                                 overwrite=overwrite, stop=stop):
            yield event
            if isinstance(event, LabelProgress):
                share = event.windows_done / event.windows if event.windows else 1.0
                yield StacksProgress(index, len(jobs), share, (before + share * voxels[index]) / total)
            elif isinstance(event, LabelFinished):
                yield StackFinished(index, len(jobs), str(job.output), time.perf_counter() - started,
                                    event.objects, event.cancelled)
                if event.cancelled:
                    return written
        written.append(job.output)
    return written
