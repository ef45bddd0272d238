"""Reading the stacks biologists have: folders of numbered TIFF slices, multi-page (LZW) TIFFs, HDF5 and zarr.

Microscopes and older tools write a stack as one file per section, numbered with or without leading zeros, so
slices are sorted the way a person counts (``slice2`` before ``slice10``). The voxel size is read from the
TIFF's own metadata where it has any (ImageJ's spacing and unit, the resolution tags), in nm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
# Units as TIFF writers spell them, lower-cased; ImageJ may store the micro sign as the text "\u00B5m".
_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "\\u00b5m": 1e3,
            "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "mm": 1e6, "millimeter": 1e6, "cm": 1e7,
            "centimeter": 1e7, "m": 1e9, "inch": 2.54e7}


class StackError(ValueError):
    """A file or folder that cannot be read as one stack; the message names the file at fault."""


@dataclass(frozen=True)
class Stack:
    data: Any  # numpy, or a lazy zarr / h5py array for large files
    voxel_size: tuple[float, float, float] | None  # x, y, z in nm, when the file says
    source: Path


def natural_key(name: str) -> list[Any]:
    """'slice10.tif' -> ['slice', 10, '.tif']: numbers compare as numbers, whatever their leading zeros."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def slice_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_stack(path: str | Path) -> Stack:
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path} does not exist")
    if path.is_dir() and path.suffix.lower() != ".zarr":
        return _read_folder(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return Stack(tif.asarray(), tiff_voxel_size(tif), path)
        except (tifffile.TiffFileError, ValueError) as exc:
            raise StackError(f"{path.name} is not a readable TIFF: {exc}") from exc
    if suffix == ".zarr":
        import zarr

        try:
            return Stack(zarr.open_array(store=str(path), mode="r"), None, path)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise StackError(f"{path.name} holds no zarr array at its top level: {exc}") from exc
    if suffix in HDF5_SUFFIXES:
        return _read_hdf5(path)
    raise StackError(f"{path.name}: unsupported file type {suffix!r} (TIFF, a folder of TIFF slices, HDF5 or zarr)")


def _read_folder(folder: Path) -> Stack:
    import tifffile

    files = slice_files(folder)
    if not files:
        raise StackError(f"{folder} holds no .tif or .tiff slices")
    slices, voxel = [], None
    for file in files:
        try:
            with tifffile.TiffFile(file) as tif:
                plane = tif.asarray()
                voxel = voxel or tiff_voxel_size(tif)
        except (tifffile.TiffFileError, ValueError) as exc:
            raise StackError(f"{file.name} is not a readable TIFF: {exc}") from exc
        if slices and (plane.shape != slices[0].shape or plane.dtype != slices[0].dtype):
            raise StackError(f"{file.name} is {plane.shape} {plane.dtype} but {files[0].name} is "
                             f"{slices[0].shape} {slices[0].dtype}: every slice of a stack must match")
        slices.append(plane)
    return Stack(np.stack(slices) if len(slices) > 1 else slices[0], voxel, folder)


def _read_hdf5(path: Path) -> Stack:
    try:
        import h5py
    except ImportError as exc:
        raise StackError("reading HDF5 needs the h5py package (pip install h5py)") from exc
    handle = h5py.File(path, "r")
    found: list[Any] = []
    handle.visititems(lambda _name, item: found.append(item) if isinstance(item, h5py.Dataset)
                      and item.ndim in (2, 3) else None)
    if not found:
        handle.close()
        raise StackError(f"{path.name} holds no 2D or 3D dataset")
    biggest = max(found, key=lambda d: d.size)
    voxel = None
    spacing = biggest.attrs.get("element_size_um")  # ilastik / Fiji convention, (z, y, x) in micrometres
    if spacing is not None and len(spacing) == 3:
        voxel = (float(spacing[2]) * 1e3, float(spacing[1]) * 1e3, float(spacing[0]) * 1e3)
    return Stack(biggest, voxel, path)  # the file stays open: the dataset is read lazily, block by block


def tiff_voxel_size(tif: Any) -> tuple[float, float, float] | None:
    """(x, y, z) in nm from ImageJ metadata and the resolution tags; None when the file does not say."""
    page = tif.pages[0]
    imagej = tif.imagej_metadata or {}
    unit = str(imagej.get("unit", "")).strip().lower()
    shaped = (tif.shaped_metadata or [{}])[0] if getattr(tif, "shaped_metadata", None) else {}
    if isinstance(shaped, dict) and "voxel_size_nm" in shaped:  # what this plugin's writer stores
        x, y, z = (float(v) for v in shaped["voxel_size_nm"])
        return (x, y, z)
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    resolution_unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
    if unit in _UNIT_NM:
        per_unit_nm = _UNIT_NM[unit]
    elif int(resolution_unit) == 2:
        per_unit_nm = _UNIT_NM["inch"]
    elif int(resolution_unit) == 3:
        per_unit_nm = _UNIT_NM["cm"]
    else:
        return None  # pixels per "no unit": not a physical size
    sizes = []
    for key in ("XResolution", "YResolution"):
        num, den = tags[key].value
        if num == 0:
            return None
        sizes.append(per_unit_nm * den / num)
    x, y = sizes
    if (x, y) == (_UNIT_NM["inch"] / 72, _UNIT_NM["inch"] / 72) or (x, y) == (per_unit_nm, per_unit_nm) and not unit:
        return None  # 72 dpi or 1 pixel per unit: a writer's default, not a measurement
    z = imagej.get("spacing")
    z_nm = float(z) * per_unit_nm if z is not None and unit in _UNIT_NM else x
    return (x, y, z_nm)
