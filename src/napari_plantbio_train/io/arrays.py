"""Reading blocks from whatever holds a stack, and writing results that may not fit in memory.

napari layers hold numpy, dask or zarr arrays, and a stack from a large acquisition may be larger than RAM, so
auto-labelling never asks for the whole array: it reads one block at a time (``read_block``) and writes one
block at a time into an output that is a numpy array, a zarr array, or a file (``.zarr`` directory or ``.tif``).
Files are built under a temporary name and moved into place only when complete: a cancelled or failed run never
leaves a file that looks like a finished result.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..job.config import ConfigError
from .files import atomic_write

Region = tuple[slice, slice, slice]  # (z, y, x) of the (Z, Y, X) view of a stack
OUTPUT_SUFFIXES = (".zarr", ".tif", ".tiff")


def stack_shape(array: Any) -> tuple[int, int, int]:
    """The (Z, Y, X) shape of a 2D image (one slice) or a 3D stack, without reading any data."""
    shape = tuple(int(s) for s in np.shape(array)) if not hasattr(array, "shape") else tuple(map(int, array.shape))
    if len(shape) == 2:
        return (1, *shape)  # type: ignore[return-value]
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(f"expected a 2D image or a 3D stack, got shape {shape}")


def read_block(array: Any, region: Region) -> np.ndarray:
    """One (z, y, x) block of a numpy, dask or zarr array as numpy; a 2D image is read as one slice."""
    if len(array.shape) == 2:
        block = array[region[1], region[2]]
        block = np.asarray(block.compute() if hasattr(block, "compute") else block)
        return block[np.newaxis]
    block = array[region]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def write_block(array: Any, region: Region, values: np.ndarray) -> None:
    if len(array.shape) == 2:
        array[region[1], region[2]] = values[0]
    else:
        array[region] = values


class Output:
    """Where a result goes: an in-memory array, a zarr array, or a ``.zarr`` / ``.tif`` path.

    ``array`` is what blocks are written to; ``finish()`` makes a file target appear under its final name.
    TIFF cannot be written block by block in any order, so a TIFF target is first built as a temporary zarr
    store next to it and then copied out one slice at a time.
    """

    def __init__(self, target: Any, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 *, overwrite: bool = False, voxel_size: tuple[float, float, float] | None = None) -> None:
        self.target, self.voxel_size = target, voxel_size
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize  # uncompressed: the most a file needs
        self.path: Path | None = None
        self._tmp: Path | None = None
        dtype = np.dtype(dtype)
        if target is None:
            self.array: Any = np.zeros(shape, dtype)
        elif isinstance(target, (str, os.PathLike)):
            self.path = Path(target)
            check_target(self.path, overwrite=overwrite)
            remove_stale_partials(self.path)
            self._tmp = partial_path(self.path, os.getpid())
            _remove(self._tmp)
            self.array = _create_zarr(self._tmp, shape, dtype, chunks)
        else:
            if tuple(target.shape) != tuple(shape):
                raise ValueError(f"output array has shape {tuple(target.shape)}, expected {tuple(shape)}")
            if np.dtype(target.dtype) != dtype:
                raise ValueError(f"output array has dtype {target.dtype}, expected {dtype}")
            self.array = target

    def finish(self) -> Any:
        """The final result: the array itself, or the path of the completed file."""
        if self.path is None:
            return self.array
        assert self._tmp is not None
        if self.path.suffix.lower() == ".zarr":
            _remove(self.path)
            os.replace(self._tmp, self.path)
        else:
            _zarr_to_tiff(self.array, self.path, self.voxel_size)
            _remove(self._tmp)
        return self.path

    def abort(self) -> None:
        if self._tmp is not None:
            _settle_zarr_writes()
            _remove(self._tmp)


def check_target(target: Any, *, field: str = "output", overwrite: bool = False) -> None:
    """A path target's rules, for checking every argument before any work: a format written block by block, a
    folder that exists, and no existing result unless it may be replaced. Arrays and None pass."""
    if not isinstance(target, (str, os.PathLike)):
        return
    path = Path(target)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        given = f"not {path.suffix}" if path.suffix else "it has no extension"
        raise ConfigError(field, f"{path.name}: results are written as .zarr, .tif or .tiff ({given}: a picture "
                                 "format holds one 8-bit image, not a stack of ids or probabilities)")
    if not path.parent.is_dir():
        raise ConfigError(field, f"{path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists (choose another name or overwrite it)")


def partial_path(path: Path, pid: int) -> Path:
    """Where a result is built before it takes its name: hidden, beside it, named by the building process."""
    return path.with_name(f".{path.name}.partial-{pid}")


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove what killed runs left while building ``path`` (``.name.partial-PID`` whose process is gone on this
    machine); a partial of a process still running is left alone. Returns what was removed."""
    removed = []
    for partial in path.parent.glob(f".{path.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            _remove(partial)
            removed.append(partial)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid() or sys.platform == "win32":  # Windows' os.kill would end the process, not probe it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: keep its file
    return True


def _create_zarr(path: Path, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...]) -> Any:
    import zarr

    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))
    return zarr.open_array(store=str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def _zarr_to_tiff(array: Any, path: Path, voxel_size: tuple[float, float, float] | None) -> None:
    """Copy slice by slice into a zlib-compressed TIFF, written whole or not at all.

    The voxel size goes into ImageJ metadata (Fiji reads it) where ImageJ supports the dtype, and into the
    JSON description otherwise (ImageJ has no 32-bit integer type, which instance labels need).
    """
    import tifffile

    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    axes = "ZYX" if len(shape) == 3 else "YX"
    imagej = voxel_size is not None and dtype in (np.uint8, np.uint16, np.float32) and nbytes < 2**32
    kwargs: dict[str, Any] = {"metadata": {"axes": axes}}
    if voxel_size is not None:
        x, y, z = voxel_size
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        kwargs["metadata"] = ({"axes": axes, "spacing": z, "unit": "nm"} if imagej
                              else {"axes": axes, "voxel_size_nm": [x, y, z]})

    def pages():
        for z in range(shape[0] if len(shape) == 3 else 1):
            yield np.asarray(array[z] if len(shape) == 3 else array[...])

    def write(handle: Any) -> None:
        with tifffile.TiffWriter(handle, bigtiff=nbytes >= 2**31, imagej=imagej) as tif:
            tif.write(pages(), shape=shape, dtype=dtype, photometric="minisblack", compression="zlib", **kwargs)

    atomic_write(path, write)


def _settle_zarr_writes(timeout: float = 10.0) -> None:
    """Wait for the chunk writes zarr still runs after one of them failed (a full disk): a write of a block is
    many chunk writes gathered on zarr's own event loop, and when one fails the others go on in their threads,
    so a folder removed at once was created again by them (a ``.partial`` left behind, seen once in three runs
    of tests/test_faults.py). Nothing to wait for when zarr never started its loop."""
    try:
        from zarr.core import sync as zarr_sync

        loop = zarr_sync.loop[0]
    except (ImportError, AttributeError, IndexError):
        return
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others() -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(others(), loop).result(timeout + 1.0)
    except Exception:  # a loop stopping meanwhile: the removal below still runs
        pass


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
