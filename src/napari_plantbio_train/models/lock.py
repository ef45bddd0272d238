"""One job per model folder: the owner's lock.

Two jobs writing one folder interleave their metrics, overwrite each other's checkpoints and leave a
``model.json`` that describes one run and a ``config.json`` that describes the other. So the process that writes
a model folder (the dock's training, the command line's, rank 0 of a data-parallel job) holds an exclusive lock
on ``.<name>.lock`` beside the folder from before its first write until it ends, and a second job is refused in
one line naming the first (process, host, since when).

The lock is ``flock`` (``msvcrt.locking`` on Windows) on an open file: the operating system releases it when the
holding process ends in any way, so a lock left by a crashed or killed job is simply taken by the next one. The
lock file lives beside the folder, not in it, so removing a folder never removes its lock, and it is never
deleted or replaced (another process may be waiting on that very file). Its text, who holds it, is only for the
refusal message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..job.config import ConfigError

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(handle: IO[Any]) -> bool:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(handle: IO[Any]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(handle: IO[Any]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(handle: IO[Any]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


READ_TRIES = 20  # a holder writes who it is just after taking the lock: a reader that came between waits a little


def lock_path(root: Path, name: str) -> Path:
    """Beside the folder, hidden, and not a model name (those start with a letter or digit)."""
    return Path(root) / f".{name}.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a model folder's lock, as the holder wrote it."""

    pid: int | None
    host: str | None
    since: str | None
    command: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another process (starting)"
        where = f" on {self.host}" if self.host else ""
        since = f" since {self.since}" if self.since else ""
        what = f" ({self.command})" if self.command else ""
        return f"process {self.pid}{where}{since}{what}"


class FolderLock:
    """The exclusive right to write one model folder, held from ``acquire`` until ``release`` (or the process's
    end). A context manager: ``with FolderLock(root, name): ...``."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.root, self.name = Path(root), name
        self.path = lock_path(self.root, name)
        self._handle: IO[Any] | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise ``ConfigError('name', ...)`` naming the job that holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        if not _try_lock(handle):
            handle.close()
            raise busy(self.name, self.root, read_holder(self.path))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                _unlock(handle)
            finally:
                handle.close()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder(root: str | Path, name: str) -> Holder | None:
    """Who holds the folder's lock now, or None when no running job does (nothing is left locked)."""
    path = lock_path(Path(root), name)
    if not path.exists():
        return None
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError:
        return None  # a read-only models folder: no job of ours can be writing it from here
    with handle:
        if _try_lock(handle):
            _unlock(handle)
            return None
    return read_holder(path)


def ensure_free(root: str | Path, name: str) -> None:
    """Refuse (as ``acquire`` would) a folder another job is writing; for checks made before a job starts."""
    found = holder(root, name)
    if found is not None:
        raise busy(name, Path(root), found)


def busy(name: str, root: Path, found: Holder) -> ConfigError:
    return ConfigError("name", f"model {name!r} in {root} is being written by a running job, {found.describe()}: "
                               "wait for it to end or stop it (the STOP file in its folder), or pick another name")


def read_holder(path: Path) -> Holder:
    for _ in range(READ_TRIES):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("pid") is not None:
            return Holder(_int(data.get("pid")), _str(data.get("host")), _str(data.get("since")),
                          _str(data.get("command")))
        time.sleep(0.05)
    return Holder(None, None, None, None)


def _command() -> str:
    """What the holder is, in its own words: 'napari', 'napari-plantbio-train train', '__main__.py train'."""
    argv = [a for a in sys.argv[:2] if a]
    return " ".join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
