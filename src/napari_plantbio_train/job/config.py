"""A training job as one validated, serialisable value.

The widget, the command line and the saved model folder all speak this one dataclass, so a job started from
napari can be re-run headless from its ``config.json`` and vice versa. Field names follow the older tool's
training form (voxel size, window, #GPU, #CPU, base LR, iteration step/save/total, samples per batch, name).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .kinds import DIMS, MODES, PRECISIONS

Mode = Literal["semantic", "instance"]
Dims = Literal["2d", "3d"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"  # NAME_PATTERN in words


class ConfigError(ValueError):
    """A job field holds a value the engine cannot use; ``field`` lets a form put the message beside it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass
class TrainConfig:
    """Every field of the training form; only ``name`` (plus the data) has no working default.

    A field left None is the plan's to choose (planning/plan.py: from the data, this machine and the budget);
    a model folder's ``config.json`` holds the job as it trained, every field filled in.
    """

    name: str
    mode: Mode = "semantic"
    dims: Dims = "3d"
    image: str | None = None
    labels: str | None = None
    # x, y, z in nm, as on the form; None, or napari's default 1/1/1: unknown (the plan reads z's from the image)
    voxel_size: tuple[float, float, float] | None = None
    window: tuple[int, ...] | None = None  # (z, y, x) in 3D, (y, x) in 2D
    gpus: int | None = None  # None: one GPU when CUDA is present, else the CPU; N > 1: N data-parallel processes
    workers: int = field(default_factory=default_workers)  # CPU threads of the machine, shared by its processes
    cpu_processes: int = 1  # on the CPU: data-parallel processes per machine (gloo), for CPU clusters
    data_workers: int | None = None  # processes drawing windows; None: `workers` on a GPU, none on a CPU
    lr: float | None = None
    iteration_step: int = 1  # gradient accumulation: windows of this many batches make one optimiser step
    iteration_save: int = 500
    keep_checkpoints: int = 3  # periodic checkpoints kept (the newest); the last and the best are kept besides
    iterations: int = 5000
    batch_size: int | None = None
    time_limit_min: float | None = None
    validate_every: int | None = None
    log_every: int = 10
    val_fraction: float = 0.15
    base_channels: int | None = None
    depth: int | None = None
    stem_stride: int | None = None  # the network runs at 1/stride of the in-plane resolution (1, 2 or 4)
    flat_levels: int | None = None  # 3D: upper levels that convolve in-plane only (cheaper; for thick sections)
    contour_width: int | None = None  # instance mode: pixels of boundary band between two touching objects
    compile: bool = False  # torch.compile the network (GPU jobs: slower start, faster steps)
    precision: str = "auto"  # "auto": bf16 where the hardware runs it natively (see hardware.py), else fp32
    painted_slices_only: bool = False  # slices without any label are unpainted, not background: ignored
    ignore_value: int | None = None  # a label value that marks "not painted here": ignored, never background
    init_from: str | None = None  # a named model to continue from: its weights, normalisation and classes
    # More image + labels pairs sampled beside the first (paths or layer names, for the record and the CLI).
    extra_images: tuple[str, ...] = ()
    extra_labels: tuple[str, ...] = ()
    pair_weights: tuple[float, ...] | None = None  # share of windows per pair, first pair first; None: equal
    touched_only: bool = False  # trust only voxels near where the first labels differ from `auto_labels`
    touched_margin: int = 16  # in-plane pixels of context around each correction (z: scaled by anisotropy)
    auto_labels: str | None = None  # the auto-label result the first pair's labels were corrected from
    # With touched_only: a mask of the voxels the user reviewed (painted, erased, accepted), trusted with the changes.
    reviewed: str | None = None
    # A continued model: the share of windows drawn from its lineage's first data, kept in the parent's folder
    # (training/rehearsal.py), so that a version trained on a few corrections does not forget the rest; 0: none.
    rehearse: float = 0.0
    seed: int = 0

    # ----- derived values -------------------------------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        return 2 if self.dims == "2d" else 3

    @property
    def anisotropy(self) -> float:
        """z spacing over in-plane spacing: the network keeps flat kernels while z is much coarser."""
        if self.voxel_size is None:
            return 1.0
        x, y, z = self.voxel_size
        return float(z) / ((float(x) + float(y)) / 2.0)

    def data_processes(self, device_type: str) -> int:
        """Window-drawing processes: on a GPU the #CPU field's worth keep it fed; on a CPU the network needs
        every core, and drawing in the training thread costs about 1% of an iteration (benchmarks/)."""
        if self.data_workers is not None:
            return self.data_workers
        return self.workers if device_type == "cuda" else 0

    # ----- validation -----------------------------------------------------------------------------------------
    def problems(self) -> list[ConfigError]:
        """Every rule the job's fields break on their own, so a form can mark all wrong fields at once. Rules that
        need the data, the machine or the models folder are planning.problems'."""
        found: list[ConfigError] = []

        def bad(name: str, message: str) -> None:
            found.append(ConfigError(name, message))

        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            bad("name", f"{self.name!r} is not a safe folder name: {NAME_RULE}")
        if self.mode not in MODES:
            bad("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.dims not in DIMS:
            bad("dims", f"{self.dims!r} is not one of {', '.join(DIMS)}")
        if self.voxel_size is not None and (len(self.voxel_size) != 3
                                            or not all(_positive_number(v) for v in self.voxel_size)):
            bad("voxel_size", f"{self.voxel_size!r} must be three positive numbers of nm per pixel (x, y, z)")
        for name in ("workers", "iteration_step", "iteration_save", "keep_checkpoints", "iterations", "log_every"):
            value = getattr(self, name)
            if not _whole_number(value, 1):
                bad(name, f"{value!r} must be a whole number of at least 1")
        for name in ("batch_size", "validate_every", "base_channels", "depth", "contour_width"):  # None: the plan's
            value = getattr(self, name)
            if value is not None and not _whole_number(value, 1):
                bad(name, f"{value!r} must be a whole number of at least 1, or empty for the plan to choose")
        if self.flat_levels is not None and not _whole_number(self.flat_levels, 0):
            bad("flat_levels", f"{self.flat_levels!r} must be a whole number of levels (0: none), or empty")
        if self.data_workers is not None and not _whole_number(self.data_workers, 0):
            bad("data_workers", f"{self.data_workers!r} must be a whole number of processes (0: draw windows in the "
                                "training thread), or empty for automatic")
        if self.stem_stride is not None and self.stem_stride not in (1, 2, 4):
            bad("stem_stride", f"{self.stem_stride!r} must be 1, 2 or 4, or empty for the plan to choose")
        if self.lr is not None and (not _positive_number(self.lr) or self.lr > 1):
            bad("lr", f"{self.lr!r} must be a positive number no larger than 1 (typical: 1e-4 to 3e-3)")
        if self.time_limit_min is not None and not _positive_number(self.time_limit_min):
            bad("time_limit_min", f"{self.time_limit_min!r} must be a positive number of minutes, or empty")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 0.5):
            bad("val_fraction", f"{self.val_fraction!r} must lie between 0 and 0.5")
        if self.ignore_value is not None and not _whole_number(self.ignore_value, 0):
            bad("ignore_value", f"{self.ignore_value!r} must be a label value (a whole number of at least 0), "
                                "or empty")
        if not isinstance(self.compile, bool):
            bad("compile", f"{self.compile!r} must be true or false")
        if not isinstance(self.painted_slices_only, bool):
            bad("painted_slices_only", f"{self.painted_slices_only!r} must be true or false")
        self._check_pairs(bad)
        if self.precision not in PRECISIONS:
            bad("precision", f"{self.precision!r} must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
        if self.gpus is not None and not _whole_number(self.gpus, 0):
            bad("gpus", f"{self.gpus!r} must be a whole number, 0 for the CPU")
        if not _whole_number(self.cpu_processes, 1):
            bad("cpu_processes", f"{self.cpu_processes!r} must be a whole number of at least 1")
        if self.window is not None and not (isinstance(self.window, (tuple, list))
                                            and all(_whole_number(w, 1) for w in self.window)):
            bad("window", f"{self.window!r} must be whole numbers of pixels, each at least 1")
        return found

    def _check_pairs(self, bad) -> None:
        pairs = 1 + len(self.extra_images)
        if len(self.extra_images) != len(self.extra_labels):
            bad("extra_labels", f"{len(self.extra_images)} extra image(s) but {len(self.extra_labels)} extra "
                                "labels: give one labels stack per image")
        if self.pair_weights is not None:
            weights = tuple(self.pair_weights)
            if len(weights) != pairs:
                bad("pair_weights", f"{len(weights)} weight(s) for {pairs} image + labels pair(s): give one each")
            elif not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                         for w in weights) or not sum(weights) > 0:
                bad("pair_weights", f"{weights!r} must be shares of at least 0, not all 0")
        if not (isinstance(self.rehearse, (int, float)) and not isinstance(self.rehearse, bool)
                and 0 <= self.rehearse < 1):
            bad("rehearse", f"{self.rehearse!r} must be a share from 0 (none) up to, not including, 1")
        if not _whole_number(self.touched_margin, 0):
            bad("touched_margin", f"{self.touched_margin!r} must be a whole number of pixels, at least 0")

    # ----- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["voxel_size"] = None if self.voxel_size is None else list(self.voxel_size)
        out["window"] = None if self.window is None else list(self.window)
        for name in ("extra_images", "extra_labels"):
            out[name] = list(getattr(self, name))
        out["pair_weights"] = None if self.pair_weights is None else list(self.pair_weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a field of a training job (fields: {', '.join(sorted(known))})")
        values = dict(data)
        if values.get("voxel_size") is not None:
            values["voxel_size"] = tuple(float(v) for v in values["voxel_size"])
        if values.get("window") is not None:
            values["window"] = tuple(int(v) for v in values["window"])
        for name in ("extra_images", "extra_labels"):
            values[name] = tuple(values.get(name) or ())
        if values.get("pair_weights") is not None:
            values["pair_weights"] = tuple(float(v) for v in values["pair_weights"])
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ----- the job file -------------------------------------------------------------------------------------------
JOB_KIND = "napari-plantbio-train job"
DATA_FIELDS = ("image", "labels", "extra_images", "extra_labels", "auto_labels", "reviewed")


def job_document(config: TrainConfig, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``train --config FILE`` runs: the job as it is recorded (``config.json`` of its model folder) and, where
    its process reads the data from elsewhere (the dock's layers saved to a temporary folder), those paths.

    A JSON document rather than a command line: every field, None included, comes back exactly.
    """
    if config.touched_only and not (data or {}).get("auto_labels", config.auto_labels):
        raise ConfigError("auto_labels", "the auto-label result the labels were corrected from is needed")
    unknown = sorted(set(data or {}) - set(DATA_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a data field ({', '.join(DATA_FIELDS)})")
    document: dict[str, Any] = {"kind": JOB_KIND, "config": config.to_dict()}
    if data:
        document["data"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    return document


def read_job_document(document: Any) -> tuple[TrainConfig, dict[str, Any]]:
    """(the job, where to read its data) from a job document, or from a model folder's ``config.json`` (a bare
    job, whose data fields are the paths to read)."""
    if not isinstance(document, dict):
        raise ConfigError("config", "a job file holds one JSON object (a model folder's config.json, or a job)")
    if document.get("kind") == JOB_KIND:
        config = TrainConfig.from_dict(document.get("config") or {})
        data = dict(document.get("data") or {})
    else:
        config, data = TrainConfig.from_dict(document), {}
    where = {"image": config.image, "labels": config.labels, "extra_images": config.extra_images,
             "extra_labels": config.extra_labels, "auto_labels": config.auto_labels, "reviewed": config.reviewed}
    where.update({k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in DATA_FIELDS})
    return config, where


UNSAVED = "napari layer {name!r}, not saved to a file"


def unsaved_layer(name: str) -> str:
    """How a job records a layer it trained on that no file holds: the job says so instead of naming a file."""
    return UNSAVED.format(name=name)


def is_unsaved_layer(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith("napari layer ") and value.endswith(", not saved to a file")


def _whole_number(value: Any, minimum: int) -> bool:
    """An int (not a bool, which Python counts as one) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
