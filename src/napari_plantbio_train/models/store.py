"""Named models on disk.

One folder per model name under a models folder (the user data folder, ``$PLANTBIO_MODELS_DIR`` or an explicit
path). A folder is a model only once ``model.json`` exists: every file is written to a temporary name and moved
into place, and ``model.json`` (which points at the last and best checkpoints) is written after the checkpoint
it names, so a crash at any moment leaves either the previous complete model or no model, never half of one.
Weights are plain tensors loaded with ``weights_only=True``: opening a model never runs code from the file.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io.files import atomic_write, atomic_write_json
from ..job.config import NAME_PATTERN, TrainConfig
from ..job.kinds import score_name

ENV_VAR = "PLANTBIO_MODELS_DIR"
FORMAT_VERSION = 1
# What every checkpoint repeats from model.json, so that one file rebuilds the model (load_checkpoint_file).
DESCRIBED = ("network", "normalisation", "classes", "window", "mode", "dims", "voxel_size", "postprocess",
             "precision")
METRIC_FIELDS = ("iteration", "loss", "lr", "seconds_per_iteration", "data_seconds", "validation_score",
                 "elapsed_seconds")


class ModelError(Exception):
    """A model folder is missing, incomplete or not one of ours."""


def default_models_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-plantbio-train", appauthor=False)) / "models"


@dataclass(frozen=True)
class ModelRecord:
    """What ``model.json`` says about a model: enough to rebuild and use it without its training data."""

    name: str
    folder: Path
    config: TrainConfig
    network: dict[str, Any]
    normalisation: dict[str, float]
    classes: list[int] | None
    window: tuple[int, ...]
    iterations_done: int
    last: str
    best: str | None
    best_score: float | None
    best_iteration: int | None
    postprocess: dict[str, float] | None = None
    parent: str | None = None  # the model this one continued from (a new version), if any
    lineage: tuple[str, ...] = ()  # its ancestors, oldest first

    @property
    def score_name(self) -> str:
        return score_name(self.config.mode)


class ModelStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()

    def folder(self, name: str) -> Path:
        if not NAME_PATTERN.match(name):
            raise ModelError(f"{name!r} is not a valid model name")
        return self.root / name

    def exists(self, name: str) -> bool:
        return NAME_PATTERN.match(name) is not None and (self.root / name / "model.json").is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.exists(p.name))

    def records(self) -> list[ModelRecord]:
        out = []
        for name in self.names():
            try:
                out.append(self.record(name))
            except ModelError:
                continue  # a damaged folder must not hide the others
        return out

    def record(self, name: str) -> ModelRecord:
        folder = self.folder(name)
        try:
            meta = json.loads((folder / "model.json").read_text())
            config = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
        except FileNotFoundError as exc:
            raise ModelError(f"no complete model named {name!r} in {self.root}") from exc
        except (ValueError, TypeError) as exc:
            raise ModelError(f"model {name!r} in {self.root} has an unreadable description: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ModelError(f"{folder} is not a napari-plantbio-train model (format {found!r})")
        try:
            return ModelRecord(name=name, folder=folder, config=config, network=meta["network"],
                               normalisation=meta["normalisation"], classes=meta.get("classes"),
                               window=tuple(meta["window"]), iterations_done=int(meta["iterations_done"]),
                               last=meta["last"], best=meta.get("best"), best_score=meta.get("best_score"),
                               best_iteration=meta.get("best_iteration"), postprocess=meta.get("postprocess"),
                               parent=meta.get("parent"), lineage=tuple(meta.get("lineage", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model {name!r} in {self.root} has an incomplete description (model.json lacks "
                             f"or mangles {exc})") from exc

    def load_checkpoint(self, record: ModelRecord, which: str = "best") -> dict[str, Any]:
        """The checkpoint's tensors and counters; only plain data is accepted from the file."""
        relative = record.best if which == "best" and record.best else record.last
        path = record.folder / relative
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise ModelError(f"checkpoint {path} is missing") from exc
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
            raise ModelError(f"{path} is not a checkpoint this plugin can read safely: {exc}") from exc

    def load_model(self, name: str, which: str = "best"):
        """Rebuild the network from its description and fill in the saved weights (for prediction)."""
        from .network import UNet

        record = self.record(name)
        state = self.load_checkpoint(record, which)
        model = UNet.from_spec(record.network)
        model.load_state_dict(state["model"])
        model.eval()
        return model, record


def load_checkpoint_file(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A model rebuilt from one checkpoint file alone (its weights and its own description), for a file that has
    travelled without its folder; (network in eval mode, description). Only plain data is read from the file."""
    from .network import UNet

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"checkpoint {path} is missing") from exc
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        raise ModelError(f"{path} is not a checkpoint this plugin can read safely: {exc}") from exc
    description = state.get("description") if isinstance(state, dict) else None
    if not isinstance(description, dict) or "network" not in description:
        raise ModelError(f"{path} does not describe its network (a checkpoint from before self-describing "
                         "checkpoints): load it through its model folder")
    model = UNet.from_spec(description["network"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, description


class ModelWriter:
    """Owns one model folder while a job trains it."""

    def __init__(self, store: ModelStore, config: TrainConfig, *, resume: bool) -> None:
        self.store = store
        self.config = config
        self.folder = store.folder(config.name)
        self.meta: dict[str, Any] = {}
        if resume:
            self.meta = json.loads((self.folder / "model.json").read_text())
        elif self.folder.exists():
            # Only an incomplete folder (a job that died before its first checkpoint) can be here: validation
            # refuses names of complete models, so nothing a user could load is removed.
            if store.exists(config.name):
                raise ModelError(f"model {config.name!r} already exists")
            shutil.rmtree(self.folder)
        (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / "config.json", config.to_dict())
        self.metrics_path = self.folder / "metrics.csv"
        if not resume or not self.metrics_path.exists():
            with open(self.metrics_path, "w", newline="") as handle:
                csv.writer(handle).writerow(METRIC_FIELDS)

    def describe(self, **fields: Any) -> None:
        """Facts fixed at the start of a job (network, normalisation, classes, window, validation region)."""
        self.meta.update(fields)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(row.get(k)) for k in METRIC_FIELDS])

    def description(self) -> dict[str, Any]:
        """What a checkpoint carries beside its weights, as plain data: enough to rebuild and use the model from the
        file alone (nanoGPT's checkpoints carry their model arguments the same way)."""
        return {"format": FORMAT_VERSION, **{key: self.meta[key] for key in DESCRIBED if key in self.meta}}

    def save(self, iteration: int, state: dict[str, Any], *, keep: bool = True) -> Path:
        """Write a full checkpoint (weights, optimiser, counters), then the pointer file naming it as last.

        ``keep`` files are the ``iteration save`` series the user asked for; the others (stop, time limit)
        overwrite one ``last.pt`` so frequent stops do not fill the disk.
        """
        relative = f"checkpoints/iter_{iteration:07d}.pt" if keep else "checkpoints/last.pt"
        path = self.folder / relative
        state = {**state, "description": self.description()}
        atomic_write(path, lambda h: torch.save(state, h))
        self.meta.update(format=FORMAT_VERSION, last=relative, iterations_done=iteration)
        self._commit()
        return path

    def save_best(self, iteration: int, weights: dict[str, Any], score: float) -> Path:
        path = self.folder / "checkpoints/best.pt"
        state = {"model": weights, "iteration": iteration, "description": self.description()}
        atomic_write(path, lambda h: torch.save(state, h))
        self.meta.update(best="checkpoints/best.pt", best_score=score, best_iteration=iteration)
        self._commit()
        return path

    def _commit(self) -> None:
        """The model exists for others only once a full checkpoint is on disk to resume from."""
        if "last" in self.meta:
            atomic_write_json(self.folder / "model.json", self.meta)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
