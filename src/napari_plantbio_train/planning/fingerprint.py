"""What a job's data looks like, measured once and cheaply, for the plan to choose from (nnU-Net's fingerprint).

Seconds on the whole 10 x 2341 x 2195 chloroplast stack: intensities are sampled, object sizes come from one
bincount per slice. Where the voxel size is unknown (not given, or napari's default of 1 on every axis), how
coarse z is comes from the image itself: neighbouring slices are compared with pixels that many steps apart
in-plane (``z_steps``), so a stack of thick sections is not taken for an isotropic volume, nor the reverse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LAGS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)  # in-plane steps compared with one z step
CROP = 768  # the central in-plane crop the z estimate looks at


@dataclass(frozen=True)
class Fingerprint:
    shape: tuple[int, int, int]  # (Z, Y, X); a 2D image is one slice
    dtype: str
    low: float  # 0.5th percentile of the intensities
    high: float  # 99.5th percentile
    z_steps: float | None  # one z step looks like this many in-plane steps (None: a single slice)
    z_detail: str  # how the estimate came about, for the plan's explanation
    objects: int | None = None  # instance labels: how many objects
    radius: float | None = None  # median in-plane radius of the objects' sections, in pixels
    depth: float | None = None  # median number of slices an object spans
    smallest: float | None = None  # 5th percentile of the objects' sizes, in voxels (pixels per slice in 2D)
    shares: dict[int, float] | None = None  # semantic labels: the share of each class value
    painted: float = 1.0  # share of the voxels the labels vouch for (partial labels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shares"] = None if self.shares is None else {str(k): v for k, v in self.shares.items()}
        return data


def fingerprint(image: np.ndarray, labels: np.ndarray, *, mode: str, dims: str,
                known: np.ndarray | None = None) -> Fingerprint:
    """The fingerprint of one (Z, Y, X) image + labels pair (``known``: where the labels vouch)."""
    image, labels = _stack(image), _stack(labels)
    step = max(1, image.size // 2_000_000)
    sample = image.reshape(-1)[::step].astype(np.float64)
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    z_steps, detail = estimate_z_steps(image) if image.shape[0] > 1 else (None, "a single slice")
    painted = 1.0 if known is None else float(known.mean())
    if mode == "instance":
        objects, radius, depth, smallest = _objects(labels, per_slice=dims == "2d")
        return Fingerprint(tuple(image.shape), str(image.dtype), low, high, z_steps, detail, objects, radius,
                           depth, smallest, None, painted)
    values, counts = np.unique(labels, return_counts=True)
    shares = {int(v): float(c) / labels.size for v, c in zip(values, counts)}
    return Fingerprint(tuple(image.shape), str(image.dtype), low, high, z_steps, detail, shares=shares,
                       painted=painted)


def estimate_z_steps(image: np.ndarray) -> tuple[float, str]:
    """How many in-plane steps one z step looks like: the in-plane lag at which neighbouring pixels correlate as
    weakly as neighbouring slices do. 1 is isotropic; thick serial sections read 5 to 20."""
    stack = _stack(image)
    y0, x0 = max(0, (stack.shape[1] - CROP) // 2), max(0, (stack.shape[2] - CROP) // 2)
    crop = stack[:, y0:y0 + CROP, x0:x0 + CROP].astype(np.float32)
    crop -= crop.mean(axis=(1, 2), keepdims=True)  # slice-to-slice brightness drift is not structure
    across = _correlation(crop[:-1], crop[1:])
    lags = [lag for lag in LAGS if lag < min(crop.shape[1], crop.shape[2]) - 1]
    inplane = [0.5 * (_correlation(crop[:, :-lag], crop[:, lag:]) + _correlation(crop[:, :, :-lag], crop[:, :, lag:]))
               for lag in lags]
    if across >= inplane[0]:
        return 1.0, (f"neighbouring slices correlate {across:.3f}, neighbouring pixels {inplane[0]:.3f}: "
                     "z steps look like in-plane steps")
    for (lag, before), (next_lag, after) in zip(zip(lags, inplane), zip(lags[1:], inplane[1:])):
        if after <= across <= before:
            between = lag + (next_lag - lag) * (before - across) / (before - after) if before > after else lag
            return float(between), (f"neighbouring slices correlate {across:.3f}, like pixels {between:.1f} apart "
                                    f"in-plane (neighbouring pixels {inplane[0]:.3f})")
    return float(lags[-1]), (f"neighbouring slices correlate {across:.3f}, less than pixels {lags[-1]} apart "
                             "in-plane: z is at least that coarse")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    a, b = a - a.mean(dtype=np.float64), b - b.mean(dtype=np.float64)
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / denominator if denominator > 0 else 1.0


def _objects(labels: np.ndarray, *, per_slice: bool) -> tuple[int, float | None, float | None, float | None]:
    """(count, median in-plane radius, median slices spanned, 5th percentile size) of the labelled objects."""
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        return 0, None, None, None
    flat = labels.reshape(labels.shape[0], -1)
    per_slice_counts = np.stack([np.bincount(plane, minlength=top + 1) for plane in flat.astype(np.int64)])
    areas = per_slice_counts[:, 1:]
    present = areas > 0
    radius = float(np.sqrt(np.median(areas[present]) / np.pi))
    depth = float(np.median(present.sum(axis=0)[present.any(axis=0)]))
    sizes = areas[present] if per_slice else areas.sum(axis=0)[present.any(axis=0)]
    count = int(present.sum()) if per_slice else int(present.any(axis=0).sum())
    return count, radius, depth, float(np.percentile(sizes, 5))


def _stack(array: Any) -> np.ndarray:
    array = np.asarray(array)
    return array[np.newaxis] if array.ndim == 2 else array
