"""The models of a models folder side by side: a summary row each, their validation curves, rename and delete.

A biologist who trains a version a day ends with a folder of models and the question "which one is best, and
which can go?". This answers it from what each folder already holds (``model.json``, ``config.json``,
``metrics.csv``), for the dock's models view and scripts alike. Renaming and deleting take the folder's lock
(models/lock.py) for the time they change it, so neither ever happens to a model a training job is writing, and
no job can start writing a folder half renamed or half deleted.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.files import atomic_write_json
from ..job.config import ConfigError
from .errors import ModelError
from .lock import FolderLock
from .store import METRICS_FILE, ModelRecord, ModelStore


@dataclass(frozen=True)
class ModelSummary:
    """One row of the models view: what tells two models apart at a glance."""

    name: str
    mode: str
    dims: str
    voxel_size: tuple[float, ...] | None
    iterations: int
    best_score: float | None
    score_name: str
    parent: str | None
    date: str  # when model.json was last written: the newest checkpoint's time


def summarise(record: ModelRecord) -> ModelSummary:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime((record.folder / "model.json").stat().st_mtime))
    voxel = tuple(float(v) for v in record.config.voxel_size) if record.config.voxel_size else None
    return ModelSummary(record.name, record.config.mode, record.config.dims, voxel, int(record.iterations_done),
                        record.best_score, record.score_name, record.parent, when)


def summaries(store: ModelStore) -> list[ModelSummary]:
    """Every usable model of the folder, by name (damaged and unfinished folders are listed by ``models``)."""
    return [summarise(record) for record in store.records()]


def validation_curve(store: ModelStore, name: str) -> list[tuple[int, float]]:
    """(iteration, validation score) of each validation the model's job logged in metrics.csv, in order; empty
    for a model that never validated or has no metrics.csv (an imported one may not)."""
    return [(row["iteration"], row["validation_score"]) for row in _metric_rows(store, name, "validation_score")]


def step_seconds_logged(store: ModelStore, name: str) -> float | None:
    """The median seconds per iteration the model's own job logged (None without metrics.csv): the pace a new
    version of it, the same network, can expect on the machine it trained on."""
    steps = [row["seconds_per_iteration"] for row in _metric_rows(store, name, "seconds_per_iteration")]
    return float(statistics.median(steps)) if steps else None


def _metric_rows(store: ModelStore, name: str, column: str) -> list[dict[str, Any]]:
    """metrics.csv's rows that logged ``column``, as numbers (iteration and column), in order."""
    path = store.folder(name) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            value, iteration = row.get(column), row.get("iteration")
            if value and iteration:
                try:
                    rows.append({"iteration": int(float(iteration)), column: float(value)})
                except ValueError:
                    continue  # a line cut by a crash mid-write
    return rows


def delete_model(store: ModelStore, name: str) -> Path:
    """Remove the model's folder; refused (``ConfigError`` naming the job) while a training job writes it."""
    folder = _existing(store, name)
    with FolderLock(store.root, name):
        shutil.rmtree(folder)
    return folder


def rename_model(store: ModelStore, name: str, new_name: str) -> Path:
    """Move the model to ``new_name`` and keep its versions' family intact: models that name it as their parent
    or ancestor name the new name. Refused while a job writes either name, or when ``new_name`` is taken."""
    folder = _existing(store, name)
    try:
        target = store.folder(new_name)
    except ModelError as exc:  # the name rule, in one line
        raise ConfigError("name", str(exc)) from None
    if target.exists():
        raise ConfigError("name", f"{new_name!r} is taken in {store.root}: pick another name")
    with FolderLock(store.root, name), FolderLock(store.root, new_name):
        folder.rename(target)
        _rename_in_config(target / "config.json", new_name)
        _renamed_in_family([p / "model.json" for p in store.root.iterdir() if p.is_dir()], name, new_name)
    return target


def _rename_in_config(path: Path, new: str) -> None:
    """The job as recorded names its model (and resuming it writes there): it follows the folder."""
    config = json.loads(path.read_text())
    config["name"] = new
    atomic_write_json(path, config)


def _renamed_in_family(descriptions: Iterable[Path], old: str, new: str) -> None:
    """The versions continued from ``old`` name it in model.json (parent, lineage) and config.json (init_from)."""
    for path in descriptions:
        config_path = path.parent / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict) and config.get("init_from") == old:
            config["init_from"] = new
            atomic_write_json(config_path, config)
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        lineage = meta.get("lineage") or []
        if meta.get("parent") != old and old not in lineage:
            continue
        if meta.get("parent") == old:
            meta["parent"] = new
        meta["lineage"] = [new if ancestor == old else ancestor for ancestor in lineage]
        atomic_write_json(path, meta)


def _existing(store: ModelStore, name: str) -> Path:
    if not store.exists(name):
        raise ConfigError("name", f"no model named {name!r} in {store.root}; models: {store.names()}")
    return store.folder(name)
