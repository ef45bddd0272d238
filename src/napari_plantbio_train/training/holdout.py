"""What a training job validates on, so that its score means something for every kind of job.

A new model holds out a block at one end of its first pair (``sampling.split_validation``) and scores it: the
score says how well the job learned its labels. A continued model needs two answers, and a job that trusts only
the corrected regions needs another place to look:

- **learned**: did it learn the new labels? A touched-only job trusts the corrections alone, so a block at the
  stack's end usually held none of them and scored a constant 0, which made the "best" checkpoint merely the
  first. Instead one corrected site in five (a connected region of trusted voxels) is held out; a single site
  is cut along its longer in-plane axis and its last fifth held out. Held-out voxels never enter the loss, and
  validation labels them as auto-labelling would, scoring only there.
- **kept**: did it forget what the lineage knew? The first model's own held-out block is recorded in model.json
  (``kept_block``: its stack's shape and a digest of the block's voxels) and inherited by every version. Where a
  continued job's other pairs hold that very stack (the original pair, added beside the corrections), the block
  is left out of that pair's training windows and scored as well.

The score that chooses the best checkpoint is the mean of the two (either alone where only one exists), and
both are reported. A job with neither says why and keeps its final weights as its best.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .sampling import Region, crop, split_validation

HOLD_OUT_EVERY = 5  # one corrected site in five is held out
HOLD_OUT_SHARE = 0.2  # of a lone corrected site, the share held out (its far end along its longer in-plane axis)
MAX_HELD_SHARE = 0.5  # held-out sites never take more than this share of the trusted voxels


@dataclass(frozen=True)
class Box:
    """One region validation predicts: a box of one pair, and the voxels of it that are scored."""

    pair: int  # index of the pair (0: the first)
    region: Region  # what is predicted and labelled: the scored voxels and context around them
    mask: np.ndarray | None  # bool, the region's shape: scored voxels (None: every trusted voxel of the region)


@dataclass(frozen=True)
class Part:
    """A question validation answers: "learned" (the job's own labels) or "kept" (the lineage's original pair)."""

    name: str
    what: str  # in words, for the dock and the command line
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class Holdout:
    parts: tuple[Part, ...]
    train_regions: tuple[Region, ...]  # per pair, the box training windows are drawn from
    withheld: np.ndarray | None  # (Z, Y, X) bool of the first pair: trusted voxels held out of training
    kept_block: dict[str, Any] | None  # the lineage's block, recorded in model.json for the next versions
    note: str  # how the job validates, or why it cannot

    @property
    def first_region(self) -> Region:
        """The region of the first box (the preview's), or an empty one when nothing is validated."""
        if not self.parts:
            return ((0, 0), (0, 0), (0, 0))
        return self.parts[0].boxes[0].region

    def describe(self) -> dict[str, Any]:
        """Plain data for model.json: what each part scores."""
        return {"note": self.note,
                "parts": [{"name": p.name, "what": p.what,
                           "boxes": [{"pair": b.pair, "region": [list(r) for r in b.region]} for b in p.boxes]}
                          for p in self.parts]}


def block_record(stack: np.ndarray, region: Region) -> dict[str, Any]:
    """What identifies a held-out block of a stack wherever the stack reappears: its shape, the block and a
    digest of the block's voxels (a renamed or re-saved copy of the stack still matches, another stack never)."""
    return {"shape": [int(s) for s in stack.shape], "region": [[int(a), int(b)] for a, b in region],
            "digest": _digest(stack, region)}


def plan_holdout(pairs: Sequence[tuple[np.ndarray, np.ndarray | None]], window: tuple[int, int, int],
                 fraction: float, placed_by: np.ndarray, *, touched: bool,
                 inherited: dict[str, Any] | None, rehearsal: Region | None = None) -> Holdout:
    """Where a job validates. ``pairs`` are (stack, trusted mask or None) per pair, first pair first;
    ``placed_by`` is what places the first pair's block (its trusted voxels, else its labelled ones);
    ``touched``: the first pair's trusted voxels are corrections; ``inherited``: the lineage's kept block;
    ``rehearsal``: the last pair is the lineage's rehearsal crop (rehearsal.py) and this its block."""
    shapes = [tuple(int(s) for s in stack.shape) for stack, _ in pairs]
    regions: list[Region] = [whole(shape) for shape in shapes]
    found = _find_block(pairs, inherited)
    parts: list[Part] = []
    withheld = None
    notes: list[str] = []
    if touched:
        held = _held_out_sites(pairs[0][1], window)
        if held is None:
            notes.append("the corrections form one region too small to split, so none can be held out")
        else:
            boxes, withheld, what = held
            parts.append(Part("learned", what, boxes))
        kept_block = inherited
    else:
        if found == 0:  # the lineage's block on this very stack: its labels are this job's to learn
            block = _region(inherited["region"])
            regions[0] = _complement(shapes[0], block)
        else:
            regions[0], block = split_validation(shapes[0], window, fraction, placed_by)
        parts.append(Part("learned", "the held-out block", (Box(0, block, None),)))
        kept_block = inherited if inherited is not None else block_record(pairs[0][0], block)
    if rehearsal is not None:  # never trained on, whichever part scores it
        regions[-1] = _complement(shapes[-1], rehearsal)
    if found is not None and found > 0:
        block = _region(inherited["region"])
        regions[found] = _complement(shapes[found], block)
        parts.append(Part("kept", f"pair {found + 1}'s block the first model was validated on",
                          (Box(found, block, None),)))
    elif rehearsal is not None and found is None:
        parts.append(Part("kept", "the first model's validation block, kept in its folder",
                          (Box(len(pairs) - 1, rehearsal, None),)))
    elif inherited is not None:
        notes.append("forgetting is not measured: add the pair the first model was trained on to measure it")
    if not parts:
        notes.append("this job cannot be validated, so its final weights are kept as its best")
    what = " and ".join(p.what for p in parts)
    note = "; ".join(([f"validates on {what}"] if parts else []) + notes)
    return Holdout(tuple(parts), tuple(regions), withheld, kept_block, note)


def _held_out_sites(known: np.ndarray | None, window: tuple[int, int, int]
                    ) -> tuple[tuple[Box, ...], np.ndarray, str] | None:
    """Boxes around the held-out corrected sites, the voxels they withhold from training, and their words."""
    if known is None or not known.any():
        return None
    sites, n = ndimage.label(known)
    sizes = np.bincount(sites.ravel(), minlength=n + 1)[1:]
    if n >= 2:
        start = min(2, n - 1)
        chosen = [i for i in range(n) if i % HOLD_OUT_EVERY == start % HOLD_OUT_EVERY]
        if sizes[chosen].sum() > MAX_HELD_SHARE * sizes.sum():  # a few large sites: hold out one of fitting size
            fitting = np.flatnonzero(sizes <= MAX_HELD_SHARE * sizes.sum())
            if not fitting.size:
                return None
            chosen = [int(fitting[np.argmin(np.abs(sizes[fitting] - HOLD_OUT_SHARE * sizes.sum()))])]
        held = np.isin(sites, np.asarray(chosen) + 1)
        what = f"{len(chosen)} held-out corrected site{'s' if len(chosen) > 1 else ''} of {n}"
    else:
        held = _far_end(known)
        if held is None:
            return None
        sites = ndimage.label(held)[0]
        what = "the held-out fifth of the corrected region"
    boxes = []
    for site, box in enumerate(ndimage.find_objects(np.where(held, sites, 0)), start=1):
        if box is None:
            continue
        region = tuple((max(0, s.start - w // 2), min(size, s.stop + w // 2))
                       for s, w, size in zip(box, window, held.shape))
        boxes.append(Box(0, region, crop(sites, region) == site))  # type: ignore[arg-type]
    return tuple(boxes), held, what


def _far_end(site: np.ndarray) -> np.ndarray | None:
    """The last ``HOLD_OUT_SHARE`` of a lone site's voxels along its longer in-plane axis (None: too small to
    leave both sides something)."""
    box = ndimage.find_objects(site.astype(np.uint8))[0]
    axis = 1 if box[1].stop - box[1].start >= box[2].stop - box[2].start else 2
    counts = site.sum(axis=tuple(a for a in range(3) if a != axis))
    cumulative = np.cumsum(counts)
    cut = int(np.searchsorted(cumulative, (1 - HOLD_OUT_SHARE) * cumulative[-1], side="right"))
    if cut <= 0 or cut >= site.shape[axis] or cumulative[cut - 1] in (0, cumulative[-1]):
        return None  # one side would be empty: nothing to train on, or nothing held out
    held = site.copy()
    index = [slice(None)] * 3
    index[axis] = slice(0, cut)
    held[tuple(index)] = False
    return held if held.any() else None


def _find_block(pairs: Sequence[tuple[np.ndarray, np.ndarray | None]], block: dict[str, Any] | None) -> int | None:
    """The pair whose stack is the one the lineage's block was cut from (extra pairs first), or None."""
    if not block:
        return None
    shape, region = tuple(block["shape"]), _region(block["region"])
    for index in [*range(1, len(pairs)), 0]:
        stack = pairs[index][0]
        if tuple(stack.shape) == shape and _digest(stack, region) == block["digest"]:
            return index
    return None


def _digest(stack: np.ndarray, region: Region) -> str:
    values = np.ascontiguousarray(crop(stack, region))
    return hashlib.sha1(values.dtype.str.encode() + values.tobytes()).hexdigest()


def _complement(shape: tuple[int, ...], block: Region) -> Region:
    """The box beside a block cut at one end of one axis (split_validation's blocks): where training may draw."""
    out = [(0, int(s)) for s in shape]
    for axis, ((a, b), size) in enumerate(zip(block, shape)):
        if (a, b) == (0, size):
            continue
        out[axis] = (b, size) if a == 0 else (0, a)
    return tuple(out)  # type: ignore[return-value]


def _region(spans: Sequence[Sequence[int]]) -> Region:
    return tuple((int(a), int(b)) for a, b in spans)  # type: ignore[return-value]


def whole(shape: tuple[int, ...]) -> Region:
    """The region of a whole stack."""
    return tuple((0, int(s)) for s in shape)  # type: ignore[return-value]
