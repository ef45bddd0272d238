"""What a model folder's ``model.json`` must hold, checked once when a model is opened.

``model.json`` is data from disk: a hand edit, a half-copied folder or a package from someone else can give a
field the wrong type, or point a checkpoint at a file outside the folder (``"/elsewhere/best.pt"``,
``"../../etc/passwd"``). Each field is checked here before anything uses it, so a bad one is refused in one line
naming it (``ModelError``), never as a ``TypeError`` deep in the network's constructor, and weights are only ever
read from inside the folder the model is named by.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelError

Check = Callable[[Any], str | None]  # None when the value is right, else what it should be


def _integer(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"a whole number of at least {minimum}"
    return check


def _number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "a finite number"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty text"


def _optional(check: Check) -> Check:
    def optional(value: Any) -> str | None:
        return None if value is None else check(value)
    return optional


def _list_of(check: Check, lengths: tuple[int, ...] | None = None) -> Check:
    def listed(value: Any) -> str | None:
        if not isinstance(value, list) or (lengths is not None and len(value) not in lengths):
            count = "" if lengths is None else f" of {' or '.join(map(str, lengths))}"
            return f"a list{count} of values"
        wrong = next((check(v) for v in value if check(v) is not None), None)
        return None if wrong is None else f"a list of values, each {wrong}"
    return listed


def _table(fields: dict[str, Check], required: tuple[str, ...]) -> Check:
    def table(value: Any) -> str | None:
        if not isinstance(value, dict):
            return "an object of named values"
        missing = [name for name in required if name not in value]
        if missing:
            return f"an object with {', '.join(missing)}"
        for name, check in fields.items():
            if name in value and check(value[name]) is not None:
                return f"an object whose {name} is {check(value[name])}"
        return None
    return table


# The network's constructor arguments (UNet.spec): their types here, their ranges in UNet itself.
NETWORK = _table({"spatial_dims": _integer(2), "in_channels": _integer(1), "out_channels": _integer(1),
                  "base_channels": _integer(1), "depth": _integer(0), "anisotropy": _number,
                  "stem_stride": _integer(1), "max_channels": _integer(1), "max_z_pools": _optional(_integer(0))},
                 required=("spatial_dims", "in_channels", "out_channels"))

FIELDS: dict[str, Check] = {
    "network": NETWORK,
    "normalisation": _table({"low": _number, "high": _number}, required=("low", "high")),
    "classes": _optional(_list_of(_integer(0))),
    "window": _list_of(_integer(1), lengths=(2, 3)),
    "iterations_done": _integer(0),
    "last": _text,
    "best": _optional(_text),
    "best_score": _optional(_number),
    "best_iteration": _optional(_integer(0)),
    "best_tiebreak": _optional(_number),
    "best_smoothed": _optional(_number),
    "score_smoothed": _optional(_number),
    "postprocess": _optional(_table({}, required=())),
    "parent": _optional(_text),
    "lineage": _list_of(_text),
    "kept_block": _optional(_table({"shape": _list_of(_integer(1), lengths=(3,)),
                                    "region": _list_of(_list_of(_integer(0), lengths=(2,)), lengths=(3,)),
                                    "digest": _text}, required=("shape", "region", "digest"))),
    "validation_before": _optional(_table({"validation_score": _optional(_number)}, required=())),
    "best_parts": _optional(_table({"learned_score": _number, "kept_score": _number}, required=())),
    "statistics": _optional(_table({"tile": _integer(1), "objects": _list_of(_list_of(_number)),
                                    "tiles": _list_of(_list_of(_number, lengths=(2,)))},
                                   required=("tile", "objects", "tiles"))),
}
REQUIRED = ("network", "normalisation", "window", "iterations_done", "last")
CHECKPOINTS = ("last", "best")  # the fields that name files of the folder


def check_description(meta: dict[str, Any], folder: Path) -> None:
    """Refuse (``ModelError``, one line naming the field) a ``model.json`` whose fields have the wrong type or
    whose checkpoints lie outside ``folder``."""
    for name in REQUIRED:
        if name not in meta:
            raise ModelError(f"{folder} is damaged: model.json lacks {name!r}")
    for name, check in FIELDS.items():
        if name in meta:
            wrong = check(meta[name])
            if wrong is not None:
                raise ModelError(f"{folder} is damaged: model.json's {name!r} is {_shown(meta[name])}, not {wrong}")
    for name in CHECKPOINTS:
        if meta.get(name) is not None:
            inside(folder, meta[name], f"model.json's {name!r}")


def inside(folder: Path, relative: str, what: str) -> Path:
    """``folder / relative`` where that resolves inside ``folder`` (links followed), else ``ModelError``."""
    root = Path(folder).resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root) or path == root:
        raise ModelError(f"{folder} is damaged: {what} names {relative!r}, outside the model folder (a model "
                         "reads its files from its own folder only)")
    return path


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
