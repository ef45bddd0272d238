"""Writing files so that readers see the old file or the new one, never half of one.

Kept free of torch and Qt, so every writer in the package (model folders, CSV tables, meshes) can share it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..job import faults


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None],
                 verify: Callable[[Path], None] | None = None) -> None:
    """Write through a temporary sibling, fsync, then rename: readers see the old file or the new one.

    ``verify(temporary path)``, where given, checks the complete file before it takes the final name; if it
    raises, the old file (or none) stays.
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
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(data, indent=2, sort_keys=True).encode()))
