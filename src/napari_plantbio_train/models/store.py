"""Named models on disk.

One folder per model name under a models folder (the user data folder, ``$PLANTBIO_MODELS_DIR`` or an explicit
path). A folder is a model only once ``model.json`` exists: every file is written to a temporary name and moved
into place, and ``model.json`` (which points at the last and best checkpoints) is written after the checkpoint
it names, so a crash at any moment leaves either the previous complete model or no model, never half of one.
Weights are plain tensors loaded with ``weights_only=True``: opening a model never runs code from the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io.files import DiskFull, atomic_write_bytes, atomic_write_json, disk_full
from ..job.config import NAME_PATTERN, NAME_RULE, TrainConfig
from ..job.kinds import score_name
from .errors import ModelError
from .lock import Holder, holder
from .schema import NETWORK, check_description, inside

ENV_VAR = "PLANTBIO_MODELS_DIR"
FORMAT_VERSION = 1
# What every checkpoint repeats from model.json, so that one file rebuilds the model (load_checkpoint_file).
DESCRIBED = ("network", "normalisation", "classes", "window", "mode", "dims", "voxel_size", "postprocess",
             "precision")
METRICS_FILE = "metrics.csv"  # a row per logged iteration; the models view reads its curves (catalogue.py)
METRIC_FIELDS = ("iteration", "loss", "lr", "seconds_per_iteration", "data_seconds", "validation_score",
                 "elapsed_seconds", "learned_score", "kept_score")


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
    kept_block: dict[str, Any] | None = None  # the lineage's held-out block on its first stack (training/holdout.py)
    before: dict[str, float] | None = None  # a version's parent scored on what it holds out, before its first step
    best_parts: dict[str, float] | None = None  # the best checkpoint's learned_score and kept_score
    statistics: dict[str, Any] | None = None  # its training objects and tiles (inference/proofreading.py)
    voxel_size: tuple[float, ...] | None = None  # what it trained with: given, or the plan's estimate
    validation: dict[str, Any] | None = None  # what its scores were measured on (training/holdout.py describe)
    precision: dict[str, Any] | None = None  # the number format it trained in (runtime/hardware.py Verdict)
    device: str | None = None  # the device type its last run trained on

    @property
    def score_name(self) -> str:
        return score_name(self.config.mode)

    @property
    def kept_parent(self) -> bool:
        """A version none of whose steps beat its parent's weights, which it kept as its best (training/loop.py):
        it labels exactly as its parent does."""
        return self.parent is not None and self.best_iteration == 0


@dataclass(frozen=True)
class FolderState:
    """One folder of a models folder as ``models`` lists it: ``kind`` is "model" (``record`` set), "absent",
    "training" (a running job has not written its first checkpoint), "unfinished" or "damaged"."""

    name: str
    folder: Path
    kind: str
    record: ModelRecord | None
    why: str  # one line: what is wrong, for anything but a model
    advice: str  # what to do about it
    holder: Holder | None = None  # the running job writing this folder, if one is


class ModelStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()

    def folder(self, name: str) -> Path:
        if not NAME_PATTERN.match(name):
            raise ModelError(f"{name!r} is not a valid model name: {NAME_RULE}")
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

    def others(self) -> list[FolderState]:
        """Every folder of the models folder that is not a usable model, with why and what to do: unfinished
        (no checkpoint yet: a job that is running or that ended before its first one) or damaged."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name)):
            state = self.state(path.name)
            if state.record is None:
                found.append(state)
        return found

    def state(self, name: str) -> FolderState:
        """What the folder named ``name`` holds: a model, nothing, an unfinished job's folder or a damaged one."""
        folder = self.folder(name)
        running = holder(self.root, name)
        if not folder.exists():
            return FolderState(name, folder, "absent", None, "", "", running)
        if not (folder / "model.json").is_file():
            if running is not None:
                return FolderState(name, folder, "training", None, f"being trained by {running.describe()}, with "
                                   "no checkpoint yet", "wait for its first checkpoint or stop it", running)
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(folder.stat().st_mtime))
            return FolderState(name, folder, "unfinished", None, f"unfinished: its job ended before its first "
                               f"checkpoint (last written {when}), so there is nothing to resume",
                               f"remove the folder ({folder}) to train under this name again, or pick another name",
                               running)
        try:
            record = self.record(name)
        except ModelError as exc:
            reason = str(exc).removeprefix(f"{folder} is damaged: ")
            return FolderState(name, folder, "damaged", None, f"damaged: {reason}", f"remove the folder ({folder}) "
                               "or replace it with a copy from its export (import)", running)
        return FolderState(name, folder, "model", record, "", "", running)

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
        check_description(meta, folder)
        broken = config.problems()
        if broken:
            raise ModelError(f"{folder} is damaged: config.json's {broken[0]}")
        return ModelRecord(name=name, folder=folder, config=config, network=meta["network"],
                           normalisation=meta["normalisation"], classes=meta.get("classes"),
                           window=tuple(meta["window"]), iterations_done=meta["iterations_done"],
                           last=meta["last"], best=meta.get("best"), best_score=meta.get("best_score"),
                           best_iteration=meta.get("best_iteration"), postprocess=meta.get("postprocess"),
                           parent=meta.get("parent"), lineage=tuple(meta.get("lineage", ())),
                           kept_block=meta.get("kept_block"), before=meta.get("validation_before"),
                           best_parts=meta.get("best_parts"), statistics=meta.get("statistics"),
                           voxel_size=tuple(meta["voxel_size"]) if meta.get("voxel_size") else None,
                           validation=meta.get("validation"), precision=meta.get("precision"),
                           device=(meta.get("runs") or [{}])[-1].get("device"))

    def load_checkpoint(self, record: ModelRecord, which: str = "best") -> dict[str, Any]:
        """The checkpoint's tensors and counters; only plain data is accepted from the file, and only from a file
        inside the model's folder."""
        relative = record.best if which == "best" and record.best else record.last
        state = read_checkpoint(inside(record.folder, relative, f"the {which} checkpoint"))
        if not isinstance(state.get("model"), dict):
            raise ModelError(f"{record.folder / relative} is damaged: it holds no network weights")
        return state

    def load_model(self, name: str, which: str = "best"):
        """Rebuild the network from its description and fill in the saved weights (for prediction)."""
        record = self.record(name)
        state = self.load_checkpoint(record, which)
        model = _rebuilt(record.network, state["model"], record.folder / "model.json")
        return model, record


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, read as plain tensors and values (``weights_only``): a file that would need to
    run code to load is refused, in one line, without being loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"checkpoint {path} is missing") from exc
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False, which would run the file's code: never say that.
        raise ModelError(f"{path} is not a weights-only checkpoint and was not loaded: it holds Python objects "
                         "(which could run code), and those this plugin cannot read safely") from None
    except (RuntimeError, ValueError, EOFError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{path} is not a checkpoint this plugin can read safely (damaged or not a PyTorch "
                         f"file: {first})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a checkpoint of this plugin (it holds {type(state).__name__}, not a "
                         "dictionary of weights)")
    return state


def _rebuilt(network: dict[str, Any], weights: dict[str, Any], described_by: Path):
    """The network a description names, with the weights filled in and in eval mode, or one line on why not."""
    from .network import UNet

    try:
        model = UNet.from_spec(network)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{described_by} is damaged: its network cannot be built ({exc})") from None
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelError(f"{described_by}: the weights do not fit the network it describes ({first})") from None
    model.eval()
    return model


def load_checkpoint_file(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A model rebuilt from one checkpoint file alone (its weights and its own description), for a file that has
    travelled without its folder; (network in eval mode, description). Only plain data is read from the file."""
    path = Path(path)
    state = read_checkpoint(path)
    description = state.get("description")
    if not isinstance(description, dict) or "network" not in description:
        raise ModelError(f"{path} does not describe its network (a checkpoint from before self-describing "
                         "checkpoints): load it through its model folder")
    wrong = NETWORK(description["network"])
    if wrong is not None or not isinstance(state.get("model"), dict):
        raise ModelError(f"{path} is damaged: its description's network is not {wrong or 'with weights'}")
    return _rebuilt(description["network"], state["model"], path), description


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
            # The job's checks refuse the name of any existing folder (a model, or an unfinished one whose job
            # died): a folder nobody decided to remove is never emptied here.
            raise ModelError(f"{self.folder} already exists: {store.state(config.name).why or 'a model'}")
        self.metrics_path = self.folder / METRICS_FILE
        with self._writing(self.folder / "config.json"):
            (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / "config.json", config.to_dict())
        if not resume or not self.metrics_path.exists():
            self._append(METRIC_FIELDS, "w")

    def describe(self, **fields: Any) -> None:
        """Facts fixed at the start of a job (network, normalisation, classes, window, validation region)."""
        self.meta.update(fields)

    def log(self, row: dict[str, Any]) -> None:
        self._append([_fmt(row.get(k)) for k in METRIC_FIELDS], "a")

    def _append(self, values: Any, mode: str) -> None:
        line = io.StringIO()
        csv.writer(line).writerow(values)
        with self._writing(self.metrics_path, len(line.getvalue())), open(self.metrics_path, mode, newline="") as h:
            h.write(line.getvalue())

    @contextlib.contextmanager
    def _writing(self, path: Path, size: int | None = None) -> Iterator[None]:
        """A write that does not fit ends the job in one line: the file, what it needed, and the checkpoint that
        is still good (every checkpoint is written whole or not at all, so the previous one stays)."""
        try:
            yield
        except DiskFull as full:
            raise full.noted(self._safe()) from None
        except OSError as exc:
            cause = disk_full(exc)
            if cause is None:
                raise
            raise DiskFull(path, size, cause, self._safe()) from None

    def _safe(self) -> str:
        """What model.json on disk (not this job's hopes) names as the checkpoint to resume from."""
        try:
            done = json.loads((self.folder / "model.json").read_text()).get("iterations_done")
        except (OSError, ValueError, AttributeError):
            done = None
        if done is None:
            return "no checkpoint was written yet"
        return (f"the last good checkpoint is iteration {done} (free some space, then resume: train --resume "
                f"--name {self.config.name})")

    def description(self) -> dict[str, Any]:
        """What a checkpoint carries beside its weights, as plain data: enough to rebuild and use the model from the
        file alone (nanoGPT's checkpoints carry their model arguments the same way)."""
        return {"format": FORMAT_VERSION, **{key: self.meta[key] for key in DESCRIBED if key in self.meta}}

    def save(self, iteration: int, state: dict[str, Any], *, keep: bool = True) -> Path:
        """Write a full checkpoint (weights, optimiser, counters), then the pointer file naming it as last.

        ``keep`` files are the ``iteration save`` series the user asked for, of which the newest
        ``keep_checkpoints`` stay (older ones go once the new one is in place); the others (stop, time limit)
        overwrite one ``last.pt`` so frequent stops do not fill the disk.
        """
        relative = f"checkpoints/iter_{iteration:07d}.pt" if keep else "checkpoints/last.pt"
        path = self.folder / relative
        self._write_checkpoint(path, {**state, "description": self.description()})
        self.meta.update(format=FORMAT_VERSION, last=relative, iterations_done=iteration)
        self._commit()
        if keep:
            self._prune()
        return path

    def _write_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Serialised in memory first, so a disk that is full says how much the file needed."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with self._writing(path):
            atomic_write_bytes(path, buffer.getvalue())

    def _prune(self) -> None:
        """Only the newest ``keep_checkpoints`` of the periodic series stay, and never a file model.json names."""
        named = {self.folder / str(self.meta.get(k)) for k in ("last", "best") if self.meta.get(k)}
        series = sorted((self.folder / "checkpoints").glob("iter_*.pt"))
        for old in series[:max(0, len(series) - self.config.keep_checkpoints)]:
            if old not in named:
                old.unlink(missing_ok=True)

    def planned_bytes(self, model: torch.nn.Module) -> int:
        """About the most disk this job's checkpoints take at once: the periodic ones kept, ``last.pt`` (a stop)
        and ``best.pt``. The best holds the weights (measured: serialised once, as it will be written); a full
        checkpoint holds AdamW's two moments of each weight besides, about three times as much."""
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "iteration": 0, "description": self.description()}, buffer)
        best = buffer.tell()
        config = self.config
        saves = -(-config.iterations // config.iteration_save)  # the series, the final one included
        periodic = min(config.keep_checkpoints, saves)
        return (periodic + 1) * 3 * best + best

    def save_best(self, iteration: int, weights: dict[str, Any], score: float | None) -> Path:
        """The best weights so far (``score`` None: a job that cannot validate keeps its final weights)."""
        path = self.folder / "checkpoints/best.pt"
        self._write_checkpoint(path, {"model": weights, "iteration": iteration, "description": self.description()})
        self.meta.update(best="checkpoints/best.pt", best_score=score, best_iteration=iteration)
        self._commit()
        return path

    def _commit(self) -> None:
        """The model exists for others only once a full checkpoint is on disk to resume from."""
        if "last" in self.meta:
            with self._writing(self.folder / "model.json"):
                atomic_write_json(self.folder / "model.json", self.meta)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
