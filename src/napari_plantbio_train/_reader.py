"""napari reader: folders of numbered TIFF slices, TIFF with its voxel size, HDF5 and zarr stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .io.stacks import HDF5_SUFFIXES, TIFF_SUFFIXES
from .io.stacks import read as read_stack
from .io.stacks import slice_files
from .job.voxels import scale_from_voxel_size

LABEL_WORDS = ("label", "mask", "seg", "truth", "annotation")


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and p.suffix.lower() != ".zarr":
        return read if slice_files(p) else None
    if p.suffix.lower() in (*TIFF_SUFFIXES, *HDF5_SUFFIXES, ".zarr"):
        return read
    return None


def read(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """One layer; integer stacks whose name says labels (label, mask, seg, ...) open as a Labels layer."""
    if isinstance(path, list):
        path = path[0]
    stack = read_stack(path)
    name = Path(path).stem if Path(path).suffix else Path(path).name
    meta: dict[str, Any] = {"name": name, "metadata": {"source": str(stack.source)}}
    ndim = len(stack.data.shape)
    if stack.voxel_size is not None and ndim in (2, 3):
        meta["scale"] = scale_from_voxel_size(stack.voxel_size, ndim)
        meta["metadata"]["voxel_size_nm"] = list(stack.voxel_size)
    is_labels = np.issubdtype(np.dtype(stack.data.dtype), np.integer) and any(
        word in name.lower() for word in LABEL_WORDS)
    return [(stack.data, meta, "labels" if is_labels else "image")]
