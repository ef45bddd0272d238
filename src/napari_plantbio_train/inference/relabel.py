"""Labelling again after a proofreading round: near the corrections first, the whole stack afterwards, never
over the user's own work.

A continued model changes most where it was corrected, and the user looks next where the queue points; so a
round labels blocks covering those places first (``label_stack(near=...)``: cores cut to their boxes, with the
probabilities a whole-stack run gives there) and then the whole stack, while the user is already proofreading;
the second replaces the first's provisional labels (see ``_widgets.job_process.relabel_in_child`` for why not
only the blocks the first left out). Each part is merged into the labels the user is correcting: what they
reviewed (painted, erased, accepted) stays as they left it, and a new object lying mostly there is dropped
rather than cut into a sliver around their work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .blockwise import count_windows, touching_windows
from .review import mostly_reviewed

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def near_regions(shape: tuple[int, int, int], reviewed: np.ndarray | None, labels: np.ndarray | None = None,
                 ids: Iterable[int] = (), grow: tuple[int, int, int] = (0, 0, 0)) -> list[Region]:
    """Boxes around what a continued model can change first: each reviewed region, and the objects ``ids`` of
    ``labels`` (the queue's next entries, in their order), grown by ``grow`` voxels per (z, y, x) axis."""
    boxes: list[tuple[slice, ...]] = []
    if reviewed is not None and np.any(reviewed):
        boxes += [b for b in ndimage.find_objects(ndimage.label(np.asarray(reviewed, bool))[0]) if b is not None]
    wanted = list(dict.fromkeys(int(i) for i in ids if int(i) > 0))  # in the queue's order
    if labels is not None and wanted:
        found = ndimage.find_objects(np.asarray(labels), max_label=max(wanted))
        boxes += [found[i - 1] for i in wanted if found[i - 1] is not None]
    return [tuple((max(0, s.start - g), min(n, s.stop + g)) for s, g, n in zip(box, grow, shape))  # type: ignore
            for box in boxes]


def merge_relabelled(current: Any, new: np.ndarray, cores: Sequence[Region], reviewed: np.ndarray | None,
                     *, first_id: int | None = None) -> int:
    """Write ``new`` labels (ids from 1, as a ``near`` run gives them) into ``current`` inside ``cores``, in place.

    Reviewed voxels keep the user's labels; a new object lying mostly (half or more) in them is left out. New
    ids start at ``first_id`` (default: above every id in ``current``), so they never join an object outside
    the cores. Returns the next free id."""
    start = int(np.max(current)) + 1 if first_id is None else int(first_id)
    for core in cores:
        where = tuple(slice(a, b) for a, b in core)
        part = np.asarray(new[where]).astype(np.int64)
        kept = np.zeros(part.shape, bool) if reviewed is None else np.asarray(reviewed[where], bool)
        dropped = mostly_reviewed(part, kept)
        dropped[0] = True
        values = np.where(dropped[part], 0, part + start - 1)
        old = np.asarray(current[where])
        current[where] = np.where(kept, old, values).astype(old.dtype, copy=False)
    return start + int(np.max(new)) if np.size(new) else start


NEAR_MOST = 0.2  # of the whole stack's windows, for a round's first boxes together: the rest waits for the whole


def round_regions(shape: tuple[int, int, int], reviewed: np.ndarray | None, labels: np.ndarray | None,
                  ids: Iterable[int], window: Sequence[int], *, overlap: float,
                  most: float = NEAR_MOST) -> list[Region]:
    """What a round labels first: the boxes of the queue's next objects ``ids``, then each reviewed region grown
    by a quarter of the model's window (a 2D window is one slice thick), together needing at most ``most`` of
    the windows a whole-stack labelling at ``overlap`` runs.

    The queue's next objects come first because the user goes on with them while the rest is labelled: each is
    seen whole in its own box, as the new version labels it, so no one corrects what the round already fixed.
    Around a reviewed region comes next: inside it the user's labels stay whatever the model says, so what is
    worth seeing is the ring, the neighbours a correction cut or touched, about an object's width (windows are
    sized to hold objects).

    The budget is in windows because windows are what the user waits for: a core is predicted from every grid
    window that touches it, so a small box costs far more than its voxels (on the chloroplast right half, 17
    boxes holding 16% of the voxels needed 768 windows, 31% of the whole stack's, 42 s; AMD EPYC, 2 cores, fp32),
    while boxes side by side share theirs. 0.2 holds about the 10 objects a user proofreads while the whole stack
    is labelled (about 50 windows each there). Boxes are taken in that order, each if the windows of all taken so
    far and its own fit (if none does, the cheapest alone): one sprawling object, whose box spans the stack
    while its voxels are few, made a round's "first" part the whole stack (174 s of waiting instead of 120)."""
    window3 = tuple(int(w) for w in window) if len(window) == 3 else (1, *(int(w) for w in window))
    ring = tuple(w // 4 for w in window3)
    boxes = near_regions(shape, None, labels, ids)
    boxes += sorted(near_regions(shape, reviewed, grow=ring), key=_volume)  # type: ignore[arg-type]
    budget = most * count_windows([(0, n) for n in shape], window3, overlap)
    needs = [touching_windows(box, shape, window3, overlap) for box in boxes]
    used: set[tuple[int, ...]] = set()
    taken: list[Region] = []
    for box, own in zip(boxes, needs):
        if len(used | own) <= budget:
            used |= own
            taken.append(box)
    if not taken and boxes:  # nothing fits: the cheapest box alone, so the user still sees a first part
        taken.append(min(zip(boxes, needs), key=lambda pair: len(pair[1]))[0])
    return taken


def _volume(region: Region) -> int:
    return int(np.prod([b - a for a, b in region]))
