"""Writing files so that readers see the old file or the new one, never half of one.

Kept free of torch and Qt, so every writer in the package (model folders, CSV tables, meshes) can share it.
A write that does not fit (disk full, quota used up, a file-size limit) ends as one ``DiskFull`` naming the file
and, where known, how much it needed; the old file stays as it was.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..job import faults

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class DiskFull(OSError):
    """A file did not fit on its disk. ``str()`` is one line: the file, what it needed, why it did not fit, and
    ``note`` (what is safe: e.g. the last good checkpoint)."""

    def __init__(self, path: str | Path, needed: int | None, cause: int = errno.ENOSPC, note: str = "") -> None:
        super().__init__(cause, os.strerror(cause))
        self.path, self.needed, self.cause, self.note = Path(path), needed, cause, note

    def noted(self, note: str) -> "DiskFull":
        """The same failure with what the caller knows is safe added."""
        return DiskFull(self.path, self.needed, self.cause, note)

    def __str__(self) -> str:
        needed = f" ({size_text(self.needed)} needed)" if self.needed is not None else ""
        why = {errno.EFBIG: "the file is larger than this process may write (a file-size limit such as ulimit -f)",
               errno.EDQUOT: "the disk quota is used up"}.get(self.cause, "the disk is full")
        try:
            free = f", {size_text(shutil.disk_usage(_existing(self.path)).free)} free there"
        except OSError:
            free = ""
        note = f"; {self.note}" if self.note else ""
        return f"could not write {self.path}{needed}: {why}{free}{note}"


def disk_full(exc: BaseException) -> int | None:
    """The errno when ``exc`` (or what caused it: torch wraps the OSError) is a write that did not fit, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def size_text(nbytes: float) -> str:
    """Bytes as people read them: 812 KB, 97 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(nbytes)} bytes"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None],
                 verify: Callable[[Path], None] | None = None, size: int | None = None) -> None:
    """Write through a temporary sibling, fsync, then rename: readers see the old file or the new one.

    ``verify(temporary path)``, where given, checks the complete file before it takes the final name; if it
    raises, the old file (or none) stays. ``size``, where known, is what a ``DiskFull`` says was needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            if faults.holds_write(path.name):  # a test kills the process here, inside the write
                handle.truncate(handle.tell() // 2)
                faults.hold()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        cause = disk_full(exc)
        if cause is None:
            raise
        raise DiskFull(path, size, cause) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` in one piece: a write that does not fit says how much it needed."""
    atomic_write(path, lambda h: h.write(data), size=len(data))


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
