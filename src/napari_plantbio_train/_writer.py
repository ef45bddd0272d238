"""napari writer: a Labels layer to TIFF (voxel size in its metadata) or zarr, written whole or not at all."""

from __future__ import annotations

from typing import Any

import numpy as np

from .io.arrays import Output
from .job.voxels import voxel_size_from_scale


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    scale = meta.get("scale")
    voxel = voxel_size_from_scale(scale) if scale is not None and len(scale) in (2, 3) else None
    data = np.asarray(data)
    out = Output(path, data.shape, data.dtype, tuple(min(s, 512) for s in data.shape), overwrite=True,
                 voxel_size=voxel)
    try:
        out.array[...] = data
        return [str(out.finish())]
    except BaseException:
        out.abort()
        raise
