"""The one reader: every stack a biologist has, for every entry point (training, auto-labelling, evaluation, napari).

Formats: multi-page TIFF (LZW or zlib, as lab files are), a folder of numbered TIFF slices (the older tool's
format; sorted the way a person counts, ``slice2`` before ``slice10``), HDF5, zarr and ``.npy``. ``read`` returns
the data lazily, as an array-like that reads only what is indexed (napari's layer data protocol: shape, dtype,
``__getitem__``), so a stack larger than memory is shown in napari and auto-labelled block by block; training
takes ``np.asarray`` of it.

A lazy stack travels to a dask.distributed worker by its path, never as an open file: each process (re)opens
the file itself on first use. The voxel size is read where the file says it (ImageJ's spacing and unit, the
resolution tags, HDF5's ``element_size_um``), in nm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SUFFIXES = (*TIFF_SUFFIXES, *HDF5_SUFFIXES, ".zarr", ".npy")
# Units as TIFF writers spell them, lower-cased; ImageJ may store the micro sign as the text "\u00B5m".
_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "\\u00b5m": 1e3,
            "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "mm": 1e6, "millimeter": 1e6, "cm": 1e7,
            "centimeter": 1e7, "m": 1e9, "inch": 2.54e7}


class StackError(ValueError):
    """A file or folder that cannot be read as one stack; the message names the file at fault."""


@dataclass(frozen=True)
class Stack:
    data: Any  # a LazyStack (numpy-like, read on indexing), or numpy for small files without a lazy view
    voxel_size: tuple[float, float, float] | None  # x, y, z in nm, when the file says
    source: Path


def read(path: str | Path) -> Stack:
    """The stack at ``path``, lazily; a ``StackError`` names what is wrong with it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StackError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if path.is_dir() and suffix != ".zarr":
        files = slice_files(path)
        if not files:
            raise StackError(f"{path} holds no .tif or .tiff slices (a folder of numbered slices is one stack)")
        data = SliceFolder(path)
        return Stack(data, data.voxel_size, path)
    if suffix in TIFF_SUFFIXES:
        data = TiffStack(path)
        return Stack(data, data.voxel_size, path)
    if suffix == ".zarr":
        return Stack(ZarrStack(path), None, path)
    if suffix in HDF5_SUFFIXES:
        data = Hdf5Stack(path)
        return Stack(data, data.voxel_size, path)
    if suffix == ".npy":
        return Stack(NpyStack(path), None, path)
    raise StackError(f"{path.name}: unsupported file type {suffix!r} (TIFF, a folder of TIFF slices, HDF5, zarr "
                     "or .npy)")


def read_array(path: str | Path) -> np.ndarray:
    """The whole stack in memory (training needs it so)."""
    return np.asarray(read(path).data)


class LazyStack:
    """A stack on disk that reads only what is indexed. Subclasses say how to open it (``_open``, once per process:
    the handle is never pickled) and, where the format needs it, how to read a region (``_read``)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None

    # ----- numpy's face --------------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._read(key))

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data.astype(dtype, copy=False) if dtype is not None else data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, shape={self.shape}, dtype={np.dtype(self.dtype)})"

    # ----- one open handle per process -----------------------------------------------------------------------
    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = self._open()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None  # an open file stays in its process; the receiver opens its own
        return state

    def _open(self) -> Any:
        raise NotImplementedError

    def _read(self, key: Any) -> Any:
        return self.handle[key]


class TiffStack(LazyStack):
    """A (multi-page) TIFF through tifffile's zarr view: one page (or strip) decoded per indexed slice."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import tifffile

        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                self.shape, self.dtype = tuple(int(s) for s in series.shape), np.dtype(series.dtype)
                self.voxel_size = tiff_voxel_size(tif)
                described = _described_shape(tif)
        except (tifffile.TiffFileError, ValueError, IndexError, OSError) as exc:
            raise StackError(f"{self.path.name} is not a readable TIFF: {_tiff_problem(exc)}") from None
        if described is not None and int(np.prod(described)) != int(np.prod(self.shape)):
            # tifffile reads the pages it finds; a file cut short would otherwise be a smaller stack, silently.
            raise StackError(f"{self.path.name} is not a readable TIFF: the file is truncated or damaged (it "
                             f"describes a stack of shape {described} but holds {self.shape})")

    def _open(self) -> Any:
        import tifffile
        import zarr

        try:
            return zarr.open_array(store=tifffile.imread(self.path, aszarr=True), mode="r")
        except (ValueError, TypeError, KeyError, NotImplementedError):
            return tifffile.imread(self.path)  # a layout with no zarr view: read once, whole

    def _read(self, key: Any) -> Any:
        import tifffile

        try:
            return self.handle[key]
        except (tifffile.TiffFileError, ValueError, OSError, RuntimeError) as exc:
            if isinstance(exc, ValueError) and "index" in str(exc).lower():
                raise
            raise StackError(f"{self.path.name} could not be read: {_tiff_problem(exc)}") from None


class SliceFolder(LazyStack):
    """A folder of numbered TIFF slices as one (Z, Y, X) stack, each slice read when indexed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import tifffile

        self.files = slice_files(self.path)
        try:
            with tifffile.TiffFile(self.files[0]) as tif:
                first = tif.series[0]
                plane, dtype = tuple(int(s) for s in first.shape), np.dtype(first.dtype)
                self.voxel_size = tiff_voxel_size(tif)
        except (tifffile.TiffFileError, ValueError, IndexError, OSError) as exc:
            raise StackError(f"{self.files[0].name} is not a readable TIFF: {_tiff_problem(exc)}") from None
        for file in self.files[1:]:
            try:
                with tifffile.TiffFile(file) as tif:
                    other = (tuple(int(s) for s in tif.series[0].shape), np.dtype(tif.series[0].dtype))
            except (tifffile.TiffFileError, ValueError, IndexError, OSError) as exc:
                raise StackError(f"{file.name} is not a readable TIFF: {_tiff_problem(exc)}") from None
            if other != (plane, dtype):
                raise StackError(f"{file.name} is {other[0]} {other[1]} but {self.files[0].name} is {plane} "
                                 f"{dtype}: every slice of a stack must match")
        self.shape, self.dtype = (len(self.files), *plane), dtype

    def _open(self) -> Any:
        return self.files

    def _read(self, key: Any) -> np.ndarray:
        import tifffile

        key = key if isinstance(key, tuple) else (key,)
        if key and key[0] is Ellipsis:
            key = (slice(None),) * (len(self.shape) - len(key) + 1) + key[1:]
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        indices = np.arange(len(self.files))[first]
        planes = [tifffile.imread(self.files[int(i)]) for i in np.atleast_1d(indices)]
        data = np.stack(planes) if planes else np.zeros((0, *self.shape[1:]), self.dtype)
        data = data[(slice(None), *rest)]
        return data[0] if np.ndim(indices) == 0 else data


class Hdf5Stack(LazyStack):
    """The largest 2D or 3D dataset of an HDF5 file, read by region from the file (ilastik's and Fiji's way)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            import h5py
        except ImportError as exc:
            raise StackError("reading HDF5 needs the h5py package (pip install h5py)") from exc
        try:
            with h5py.File(self.path, "r") as handle:
                found: list[Any] = []
                handle.visititems(lambda _name, item: found.append(item) if isinstance(item, h5py.Dataset)
                                  and item.ndim in (2, 3) else None)
                if not found:
                    raise StackError(f"{self.path.name} holds no 2D or 3D dataset")
                biggest = max(found, key=lambda d: d.size)
                self.dataset, self.shape, self.dtype = biggest.name, tuple(biggest.shape), np.dtype(biggest.dtype)
                spacing = biggest.attrs.get("element_size_um")  # ilastik / Fiji: (z, y, x) in micrometres
        except OSError as exc:
            raise StackError(f"{self.path.name} is not a readable HDF5 file: {exc}") from None
        self.voxel_size = None
        if spacing is not None and len(spacing) == 3:
            self.voxel_size = (float(spacing[2]) * 1e3, float(spacing[1]) * 1e3, float(spacing[0]) * 1e3)

    def _open(self) -> Any:
        import h5py

        return h5py.File(self.path, "r")[self.dataset]


class ZarrStack(LazyStack):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        array = self.handle
        self.shape, self.dtype = tuple(int(s) for s in array.shape), np.dtype(array.dtype)

    def _open(self) -> Any:
        import zarr

        try:
            return zarr.open_array(store=str(self.path), mode="r")
        except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
            raise StackError(f"{self.path.name} holds no zarr array at its top level: {exc}") from None


class NpyStack(LazyStack):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        array = self.handle
        self.shape, self.dtype = tuple(int(s) for s in array.shape), array.dtype

    def _open(self) -> Any:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise StackError(f"{self.path.name} is not a readable .npy array: {exc}") from None


def natural_key(name: str) -> list[Any]:
    """'slice10.tif' -> ['slice', 10, '.tif']: numbers compare as numbers, whatever their leading zeros."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def slice_files(folder: Path) -> list[Path]:
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _described_shape(tif: Any) -> tuple[int, ...] | None:
    """The shape the file's own description gives (tifffile's JSON, ImageJ's image count), to compare with the
    pages actually there."""
    shaped = getattr(tif, "shaped_metadata", None)
    if shaped and isinstance(shaped[0], dict) and "shape" in shaped[0]:
        return tuple(int(v) for v in shaped[0]["shape"])
    images = (tif.imagej_metadata or {}).get("images")
    if images and len(tif.series[0].shape) >= 2:
        return (int(images), *tif.pages[0].shape)
    return None


def _tiff_problem(exc: BaseException) -> str:
    """tifffile's and the codecs' words for a file cut short, in a user's: 'the file is truncated or damaged'."""
    text = str(exc) or type(exc).__name__
    if any(hint in text.lower() for hint in ("corrupted", "failed to read", "truncated", "unexpected end",
                                             "not enough data", "bad_data", "decompress", "decode")):
        return f"the file is truncated or damaged ({text[:120]})"
    return text[:200]


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
