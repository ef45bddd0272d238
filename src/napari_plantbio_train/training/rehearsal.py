"""What a model keeps of the data it first learned from, so that its later versions can practise it.

A proofreading round trains a new version on the user's corrections alone: a few sites, mostly objects and their
rims. Trained on those only, a version learns that most of a stack is object and forgets the background of the
tissue it first saw; measured on the chloroplast stack (benchmarks/proofread_round.py), rounds on corrections
alone predicted more objects than before the round, and the "kept" half of validation (did it forget?) could not
be scored at all, since the dock has no copy of the first pair once its job folder is gone.

So a new model writes ``rehearsal.npz`` into its folder: a crop of its first pair (image and labels as given)
that holds its validation block and, beside it, as much of its training part again, at most
``REHEARSAL_VOXELS`` voxels (8 MB of uint8 image). Each version copies its parent's file, so a lineage keeps
its first data however many rounds it goes through. A continued job with ``rehearse`` > 0 draws that share of
its windows from the crop's training part and scores the block as validation's "kept" part (holdout.py).

The file stays on this machine: exported model packages (models/exchange.py) never carry it, since it is a
piece of the user's image. It is read with ``allow_pickle=False``: loading runs no code.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.files import atomic_write
from .sampling import Region, crop

REHEARSAL_FILE = "rehearsal.npz"
REHEARSAL_VOXELS = 8 * 2**20  # the crop's largest size (uint8: 8 MB of image, and its labels)
REHEARSE_SHARE = 0.5  # of a continued job's windows, drawn from its lineage's first data (the default rounds)


@dataclass(frozen=True)
class Rehearsal:
    """A crop of a lineage's first pair and, within it, the block the first model was validated on."""

    stack: np.ndarray  # (Z, Y, X) as the user's image gave it
    labels: np.ndarray  # (Z, Y, X) labels as given (ignore values and unpainted slices included)
    block: Region  # the validation block, in the crop's coordinates


def rehearsal_crop(shape: tuple[int, int, int], block: Region, window: tuple[int, int, int],
                   budget: int = REHEARSAL_VOXELS) -> tuple[Region, Region]:
    """(the crop of the stack, the block within the crop): the block at one end of the crop with as long a
    stretch of training beside it (at least a window), shrunk about the middle, never below a window, until it
    holds at most ``budget`` voxels. Blocks cut along y or x (sampling.split_validation) keep that layout."""
    spans = [list(r) for r in block]
    cut = next((axis for axis in (1, 2) if tuple(block[axis]) != (0, shape[axis])), None)
    out = [[0, int(s)] for s in shape]
    if cut is not None:
        a, b = block[cut]
        beside = max(b - a, window[cut])
        out[cut] = [0, min(shape[cut], b + beside)] if a == 0 else [max(0, a - beside), shape[cut]]
    # Shrink the axes the block spans whole first (about their middle), then the cut axis, then z.
    order = [axis for axis in (2, 1) if axis != cut] + ([cut] if cut is not None else []) + [0]
    for axis in order:
        lengths = [b - a for a, b in out]
        voxels = int(np.prod(lengths))
        if voxels <= budget:
            break
        keep = max(int(window[axis]), int(lengths[axis] * budget / voxels))
        if axis == cut:
            _shrink_cut(out, spans, axis, keep, window[axis], shape[axis])
        else:
            start = out[axis][0] + (lengths[axis] - keep) // 2
            out[axis] = [start, start + keep]
    inside = tuple((max(a, c) - c, min(b, d) - c) for (a, b), (c, d) in zip(spans, out))
    return tuple(tuple(r) for r in out), inside  # type: ignore[return-value]


def _shrink_cut(out: list[list[int]], block: list[list[int]], axis: int, keep: int, window: int, size: int) -> None:
    """Along the cut axis: the block and the training stretch beside it each get half of ``keep`` (at least a
    window each), the block staying at the stack's end."""
    half = max(window, keep // 2)
    a, b = block[axis]
    if a == 0:
        block[axis] = [0, min(b, half)]
        out[axis] = [0, min(size, block[axis][1] + half)]
    else:
        block[axis] = [max(a, size - half), size]
        out[axis] = [max(0, block[axis][0] - half), size]


def write_rehearsal(folder: Path, image: np.ndarray, labels: np.ndarray, block: Region,
                    window: tuple[int, int, int]) -> Rehearsal:
    """Keep the crop of a new model's first pair (``image``/``labels`` (Z, Y, X), lazy arrays read only there);
    written whole or not at all."""
    region, inside = rehearsal_crop(tuple(int(s) for s in np.shape(image)), block, window)
    kept = Rehearsal(np.ascontiguousarray(np.asarray(crop(image, region))),
                     np.ascontiguousarray(np.asarray(crop(labels, region))), inside)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, stack=kept.stack, labels=kept.labels, block=np.asarray(inside, dtype=np.int64),
                        region=np.asarray(region, dtype=np.int64))
    atomic_write(folder / REHEARSAL_FILE, lambda handle: handle.write(buffer.getvalue()), size=buffer.tell())
    return kept


def copy_rehearsal(parent: Path, folder: Path) -> bool:
    """A new version keeps its lineage's first data (False: the parent has none, e.g. a model from before)."""
    source = parent / REHEARSAL_FILE
    if not source.is_file():
        return False
    with open(source, "rb") as data:
        atomic_write(folder / REHEARSAL_FILE, lambda handle: shutil.copyfileobj(data, handle))
    return True


def read_rehearsal(folder: Path) -> Rehearsal | None:
    """The lineage's first data kept in a model folder, or None where there is none or it is unreadable (a model
    trained before rehearsal files existed; a damaged file is not worth refusing a round for)."""
    path = folder / REHEARSAL_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stack, labels, block = data["stack"], data["labels"], data["block"]
    except (OSError, ValueError, KeyError):
        return None
    if stack.ndim != 3 or stack.shape != labels.shape or block.shape != (3, 2):
        return None
    return Rehearsal(stack, labels, tuple((int(a), int(b)) for a, b in block))  # type: ignore[arg-type]
