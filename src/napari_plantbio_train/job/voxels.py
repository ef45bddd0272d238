"""napari's layer scale and the job's voxel size, one conversion each way.

napari orders axes (…, z, y, x) and the plugin reads a layer's scale as nm per pixel; the older tool's form, the
job and the model folder give the voxel size as (x, y, z) in nm. A 2D image has no z: its voxel size gets z = 1.
"""

from __future__ import annotations

from collections.abc import Sequence


def voxel_size_from_scale(scale: Sequence[float]) -> tuple[float, float, float]:
    """(x, y, z) in nm from a layer's (…, z, y, x) scale."""
    values = [float(s) for s in scale]
    if len(values) < 2:
        raise ValueError(f"a layer scale has at least two axes (y, x), got {tuple(scale)}")
    return values[-1], values[-2], values[-3] if len(values) >= 3 else 1.0


def scale_from_voxel_size(voxel_size: Sequence[float], ndim: int) -> tuple[float, ...]:
    """The (z, y, x) scale of an ``ndim``-dimensional (2 or 3) layer from an (x, y, z) voxel size."""
    if ndim not in (2, 3):
        raise ValueError(f"a layer of a stack has 2 or 3 dimensions, got {ndim}")
    x, y, z = (float(v) for v in voxel_size)
    return (z, y, x)[-ndim:]
