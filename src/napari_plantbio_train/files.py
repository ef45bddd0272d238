"""Writing files so that readers see the old file or the new one, never half of one.

Kept free of torch and Qt, so every writer in the package (model folders, CSV tables, meshes) can share it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary sibling, fsync, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda h: h.write(json.dumps(data, indent=2, sort_keys=True).encode()))
