"""Predictions where the user looks, while a job trains (ilastik's live update, on a budget).

The validation preview shows only the held-out block, often a strip at the edge of the stack. The view preview
predicts the slices around the viewer's current z position, with the weights of that moment, at each validation
and on request between iterations. Its cost is bounded: the region holds at most a budget of voxels, and the
budget follows the measured speed so that a preview takes about ``VIEW_SHARE`` of the training time between two
validations. The front end says what it wants through a ``ViewRequest``: in memory (``ViewBox``, for a job in
the same process) or as a small JSON file in the model folder (``ViewFile``), which the dock writes atomically for
a job in a child process, beside the STOP file. The job removes the file when it starts, so a request left by an
earlier job is not taken for one to this job.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..inference.predictor import labels_from_probabilities, make_predictor
from ..inference.sliding import predict_stack
from ..io.files import atomic_write_json
from ..job.events import ViewPreview
from ..job.kinds import channel_names
from .material import window3
from .sampling import Region, crop
from .validation import VALIDATION_OVERLAP

if TYPE_CHECKING:
    from ..job.config import TrainConfig
    from .material import Material

VIEW_FILE = "VIEW.json"
MAX_VIEW_VOXELS = 2 ** 18  # a 512 x 512 slice: a few tenths of a second for a small network on two CPU cores
VIEW_SHARE = 0.1  # of the training time between two validations that a view preview may take


@dataclass(frozen=True)
class ViewRequest:
    """Where the user looks, in voxels of the training image (z, y, x), and how often "Preview here" was
    pressed (``asked`` grows by one per press: a larger number than the job last served is a request now).
    ``live`` False: predict there only when asked, not at each validation (the job trains at full speed)."""

    z: int
    y: float
    x: float
    asked: int = 0
    live: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewRequest:
        return cls(int(data["z"]), float(data["y"]), float(data["x"]), int(data.get("asked", 0)),
                   bool(data.get("live", True)))


class ViewSource(Protocol):
    def latest(self) -> ViewRequest | None: ...


class ViewBox:
    """A request handed over in memory, for a job in a thread of the same process."""

    def __init__(self, request: ViewRequest | None = None) -> None:
        self._lock = threading.Lock()
        self._request = request

    def set(self, request: ViewRequest) -> None:
        with self._lock:
            self._request = request

    def latest(self) -> ViewRequest | None:
        with self._lock:
            return self._request


def view_file(model_folder: str | Path) -> Path:
    return Path(model_folder) / VIEW_FILE


def write_view_request(model_folder: str | Path, request: ViewRequest) -> None:
    """Whole or not at all (files.atomic_write), so the job never reads half a request."""
    atomic_write_json(view_file(model_folder), asdict(request))


class ViewFile:
    """The request a dock wrote into the model folder; read again only when the file changed (a stat per
    iteration, no parsing)."""

    def __init__(self, model_folder: str | Path) -> None:
        self.path = view_file(model_folder)
        self._stamp: int | None = None
        self._request: ViewRequest | None = None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._stamp, self._request = None, None

    def latest(self) -> ViewRequest | None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return self._request
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._request = ViewRequest.from_dict(json.loads(self.path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # not a request (written by hand?): keep the last good one
        return self._request


# ----- the region -----------------------------------------------------------------------------------------------
def smallest_view(shape: tuple[int, int, int], window: tuple[int, ...]) -> int:
    """Voxels of the smallest region worth predicting: one window (or the whole stack, where it is smaller)."""
    return math.prod(min(w, s) for w, s in zip(window3(window), shape))


def view_region(request: ViewRequest, shape: tuple[int, int, int], window: tuple[int, ...],
                budget: int = MAX_VIEW_VOXELS) -> Region:
    """The (start, stop) per (z, y, x) axis to predict for a request: the slices around its z (one for a 2D
    job, a window's depth for a 3D one), and the largest near-square field around its centre that keeps the
    region within ``budget`` voxels, clipped to the stack and never smaller than a window."""
    depth, wy, wx = (min(w, s) for w, s in zip(window3(window), shape))
    size_z, size_y, size_x = shape
    plane = max(1, budget // depth)
    height = min(size_y, max(wy, math.isqrt(plane)))
    width = min(size_x, max(wx, plane // height))
    height = min(size_y, max(wy, plane // width))  # a narrow stack gives its unused width to the height
    z0 = _clamp(int(request.z) - depth // 2, 0, size_z - depth)
    y0 = _clamp(int(round(request.y - height / 2)), 0, size_y - height)
    x0 = _clamp(int(round(request.x - width / 2)), 0, size_x - width)
    return ((z0, z0 + depth), (y0, y0 + height), (x0, x0 + width))


def next_budget(voxels: int, seconds: float, allowed_seconds: float, floor: int,
                ceiling: int = MAX_VIEW_VOXELS) -> int:
    """The voxels the next preview may hold: as many as the measured speed predicts in ``allowed_seconds``,
    between ``floor`` (one window) and ``ceiling``."""
    if seconds <= 0 or allowed_seconds <= 0:
        return ceiling if seconds <= 0 else floor
    return int(_clamp(int(voxels / seconds * allowed_seconds), floor, max(floor, ceiling)))


# ----- the prediction, inside the training loop ------------------------------------------------------------------
class ViewPreviews:
    """What the training loop keeps between view previews: the source, the last press served, the budget."""

    def __init__(self, source: ViewSource, material: Material, config: TrainConfig) -> None:
        self.source, self.material, self.config = source, material, config
        self.served = 0
        self.floor = smallest_view(material.stack.shape, material.window)
        self.budget = max(self.floor, MAX_VIEW_VOXELS)

    def wanted(self, validating: bool) -> bool:
        """A preview is due: a press not answered yet, or a validation while the user wants them live."""
        request = self.source.latest()
        return request is not None and (request.asked > self.served or (validating and request.live))

    def predict(self, model: torch.nn.Module, iteration: int, device: torch.device, autocast: Any,
                seconds_per_iteration: float | None) -> ViewPreview | None:
        """The view preview for the latest request (None: none yet), and the budget for the next one."""
        request = self.source.latest()
        if request is None:
            return None
        self.served = max(self.served, request.asked)
        material, config = self.material, self.config
        region = view_region(request, material.stack.shape, material.window, self.budget)
        began = time.perf_counter()
        model.eval()
        try:
            predictor = make_predictor(model, config.mode, device, autocast)
            image = material.normalisation.apply(crop(material.stack, region))
            probabilities = predict_stack(predictor, image, spatial_dims=config.spatial_dims,
                                          window=material.window, overlap=VALIDATION_OVERLAP,
                                          batch_size=config.batch_size)
            labels = labels_from_probabilities(probabilities, config.mode, config.dims, material.classes,
                                               material.postprocess)
        finally:
            model.train()
        seconds = time.perf_counter() - began
        voxels = math.prod(b - a for a, b in region)
        if seconds_per_iteration:
            allowed = VIEW_SHARE * config.validate_every * seconds_per_iteration
            self.budget = next_budget(voxels, seconds, allowed, self.floor)
        return ViewPreview(iteration, probabilities.astype(np.float32, copy=False), labels,
                           tuple(a for a, _ in region), channel_names(config.mode, material.classes), seconds)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


__all__ = ["ViewRequest", "ViewBox", "ViewFile", "ViewPreviews", "view_region", "next_budget", "smallest_view",
           "write_view_request", "view_file", "MAX_VIEW_VOXELS", "VIEW_SHARE"]
