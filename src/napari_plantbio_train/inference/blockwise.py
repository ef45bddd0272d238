"""Cutting a stack into blocks that fit in memory, and joining the objects found in each into one labelling.

Three nested regions per block, per axis:

- ``core``: the part of the result this block writes. Cores tile the stack without overlap.
- ``reach``: every window of the whole-stack sliding-window grid that touches the core. Predicting the reach
  with the same grid reproduces, inside the core, exactly the probabilities a whole-stack prediction would
  give (the same windows with the same weights cover each voxel): blocks change memory, not results.
- ``context``: the core plus a halo, inside the reach. Labels are computed on the context, so an object cut by
  the core's edge is still seen whole enough to be segmented the same way from both sides of the edge. The
  windows that reach past the core give the halo its probabilities for free.

Instance ids are joined afterwards: each block numbers its objects from 1, and an object whose context labels
(in the halo past the core) mostly coincide with one object of the neighbour's core, and vice versa, is the
same object. Mutual best matches only, so one bad block cannot chain-merge a row of touching objects.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.arrays import read_block, write_block
from .sliding import window_starts

Span = tuple[int, int]
Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Block:
    index: tuple[int, int, int]  # the core's first voxel: unique, since cores tile the stack
    core: tuple[Span, Span, Span]
    context: tuple[Span, Span, Span]
    reach: tuple[Span, Span, Span]

    @staticmethod
    def region(spans: tuple[Span, ...]) -> Region:
        return tuple(slice(a, b) for a, b in spans)  # type: ignore[return-value]

    def within(self, outer: tuple[Span, ...], inner: tuple[Span, ...]) -> Region:
        """`inner` as slices of an array that holds `outer`."""
        return tuple(slice(i0 - o0, i1 - o0) for (o0, _), (i0, i1) in zip(outer, inner))  # type: ignore

    @property
    def reach_voxels(self) -> int:
        return math.prod(b - a for a, b in self.reach)


def _touching(span: Span, size: int, window: int, overlap: float) -> list[int]:
    """The starts of the grid windows that touch `span` along one axis of length `size`."""
    if size <= window:
        return [0]
    return [s for s in window_starts(size, window, overlap) if s < span[1] and s + window > span[0]]


def _reach(span: Span, size: int, window: int, overlap: float) -> Span:
    """The extent of the grid windows that touch `span` along one axis."""
    starts = _touching(span, size, window, overlap)
    return (min(starts), min(size, max(starts) + window))


def plan_blocks(shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float, halo: tuple[int, int, int],
                max_voxels: int, region: Sequence[Span] | None = None) -> list[Block]:
    """Blocks whose reach holds at most about `max_voxels` voxels (never smaller than a window per axis), their
    cores tiling `region` (default: the whole stack); reaches follow the whole stack's window grid.

    The core is halved along whichever axis shrinks the largest reach most, and only while halving helps: an
    axis already close to a window plus its margins gains nothing from a smaller core but more blocks.
    """
    spans = [tuple(r) for r in region] if region is not None else [(0, s) for s in shape]
    core = [b - a for a, b in spans]

    def longest_reach(axis: int, size: int) -> int:
        a0, a1 = spans[axis]
        return max(b - a for a, b in (_reach((c0, min(a1, c0 + size)), shape[axis], window[axis], overlap)
                                      for c0 in range(a0, a1, size)))

    reach = [longest_reach(axis, c) for axis, c in enumerate(core)]
    while math.prod(reach) > max_voxels:
        options = []
        for axis in range(3):
            if core[axis] > window[axis]:
                halved = max(window[axis], -(-core[axis] // 2))
                options.append((longest_reach(axis, halved) / reach[axis], axis, halved))
        if not options or min(options)[0] >= 1.0:
            break
        _, axis, halved = min(options)
        core[axis], reach[axis] = halved, longest_reach(axis, halved)
    edges = [list(range(a, b, c)) for (a, b), c in zip(spans, core)]
    blocks = []
    for starts in itertools.product(*edges):
        spans_core, spans_context, spans_reach = [], [], []
        for axis, c0 in enumerate(starts):
            c1 = min(spans[axis][1], c0 + core[axis])
            r0, r1 = _reach((c0, c1), shape[axis], window[axis], overlap)
            spans_core.append((c0, c1))
            spans_reach.append((r0, r1))
            # Context comes out of the reach: past the core, every voxel there is covered by some window too
            # (only by fewer than in a whole-stack prediction), which is all the labels of the halo need.
            spans_context.append((max(r0, c0 - halo[axis]), min(r1, c1 + halo[axis])))
        blocks.append(Block(tuple(starts), tuple(spans_core), tuple(spans_context), tuple(spans_reach)))  # type: ignore
    return blocks


def plan_around(shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float,
                halo: tuple[int, int, int], max_voxels: int,
                regions: Sequence[Sequence[Span]]) -> tuple[list[Block], list[Block]]:
    """(near, far): blocks whose cores tile the stack, the near ones covering exactly the boxes of `regions`.

    A proofreading round labels near its corrections first. The regular grid's blocks were too coarse for that:
    on the right half of the chloroplast stack (25M voxels), boxes around 20 corrected or queued objects covered
    a quarter to a third of it but met all four of its blocks, so "near first" labelled everything first. Here
    the stack is cut along every face of the boxes; the cells inside a box, and those outside, are joined into
    few large boxes (a greedy sweep), and each is split further only to fit `max_voxels`. Each core's reach is
    still the whole stack's window grid: inside a core, the probabilities are a whole-stack run's.
    """
    clipped = [tuple((max(0, min(n, int(a))), max(0, min(n, int(b)))) for (a, b), n in zip(region, shape))
               for region in regions]
    clipped = [r for r in clipped if all(a < b for a, b in r)]
    edges = [sorted({0, n, *(r[axis][k] for r in clipped for k in (0, 1))}) for axis, n in enumerate(shape)]
    inside = np.zeros([len(e) - 1 for e in edges], bool)
    for r in clipped:
        cells = tuple(slice(bisect.bisect_left(e, a), bisect.bisect_left(e, b)) for e, (a, b) in zip(edges, r))
        inside[cells] = True
    planned: list[list[Block]] = []
    for kind in (inside, ~inside):
        blocks: list[Block] = []
        for box in _merge_cells(kind):
            spans = [(edges[axis][lo], edges[axis][hi]) for axis, (lo, hi) in enumerate(box)]
            blocks += plan_blocks(shape, window, overlap, halo, max_voxels, region=spans)
        planned.append(blocks)
    return planned[0], planned[1]


def _merge_cells(mask: np.ndarray) -> list[tuple[Span, Span, Span]]:
    """Boxes of cells (per axis: first cell, one past the last) that together cover the True cells of `mask`
    exactly, each grown greedily along x, then y, then z."""
    free = mask.copy()
    boxes = []
    for z, y, x in np.argwhere(mask):
        if not free[z, y, x]:
            continue
        x1 = x + 1
        while x1 < mask.shape[2] and free[z, y, x1]:
            x1 += 1
        y1 = y + 1
        while y1 < mask.shape[1] and free[z, y1, x:x1].all():
            y1 += 1
        z1 = z + 1
        while z1 < mask.shape[0] and free[z1, y:y1, x:x1].all():
            z1 += 1
        free[z:z1, y:y1, x:x1] = False
        boxes.append(((int(z), int(z1)), (int(y), int(y1)), (int(x), int(x1))))
    return boxes


def count_windows(spans: Sequence[Span], window: tuple[int, int, int], overlap: float) -> int:
    """Windows the sliding window runs over a region ((start, stop) per axis): a block's reach, what labelling's
    progress counts, or a held-out box, what a validation's time scales with."""
    return math.prod(len(window_starts(b - a, w, overlap)) for (a, b), w in zip(spans, window))


def touching_windows(spans: Sequence[Span], shape: Sequence[int], window: Sequence[int],
                     overlap: float) -> set[tuple[int, ...]]:
    """Origins of the whole stack's window grid that touch a region ((start, stop) per axis): what labelling
    only that region costs, since a core is predicted from every window that touches it (see ``Block.reach``).
    Regions that share windows share their cost, so the union of these sets counts a group of regions."""
    return set(itertools.product(*(_touching(span, n, w, overlap) for span, n, w in zip(spans, shape, window))))


@dataclass(frozen=True)
class BlockResult:
    index: tuple[int, int, int]
    objects: int  # ids 1..objects in this block's core
    strips: tuple[tuple[tuple[int, int, int], np.ndarray], ...]  # (neighbour index, my labels in its core)


def store_labels(block: Block, labels: np.ndarray, out: Any, neighbours: list[tuple[int, Block]], *,
                 instance: bool) -> BlockResult:
    """Write the core of labels computed on the block's context; for instances, number the core's objects
    1..n and keep what the context saw of each neighbour's core, to link objects cut by the edge later."""
    core_in_context = block.within(block.context, block.core)
    if not instance:
        write_block(out, Block.region(block.core), labels[core_in_context])
        return BlockResult(block.index, 0, ())
    core, table = sequential_ids(labels[core_in_context], int(labels.max()) if labels.size else 0)
    write_block(out, Block.region(block.core), core)
    strips = []
    for _axis, other in neighbours:
        strip = halo_overlap(block, other)
        strips.append((other.index, table[labels[block.within(block.context, strip)]]))
    return BlockResult(block.index, int(table.max()), tuple(strips))


def join_ids(blocks: list[Block], results: dict[tuple[int, int, int], BlockResult], labels: Any) -> int:
    """Give every object one id across blocks: offsets make block ids unique, strips link the parts of objects
    cut by a block edge, and one more pass over the cores writes the final consecutive ids. Returns the count."""
    offsets, total = {}, 0
    for block in blocks:
        offsets[block.index] = total
        total += results[block.index].objects
    if len(blocks) == 1:
        return total
    links = UnionFind(total + 1)
    by_index = {b.index: b for b in blocks}
    for block in blocks:
        for other_index, strip_labels in results[block.index].strips:
            strip = halo_overlap(block, by_index[other_index])
            theirs = read_block(labels, Block.region(strip))
            for mine, their in mutual_best_pairs(strip_labels, theirs):
                links.union(offsets[block.index] + mine, offsets[other_index] + their)
    final = links.final_ids()
    for block in blocks:
        offset, count = offsets[block.index], results[block.index].objects
        table = np.concatenate([[0], final[offset + 1:offset + count + 1]]).astype(np.uint32)
        region = Block.region(block.core)
        write_block(labels, region, table[read_block(labels, region)])
    return int(final.max())


def sequential_ids(labels: np.ndarray, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the ids present in `labels` as 1..n; returns the renumbered array and the old-to-new table,
    which covers ids up to `top` (ids absent from `labels` map to 0)."""
    labels = np.asarray(labels)
    top = max(int(labels.max()) if labels.size else 0, top or 0)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=top + 1))
    present = present[present > 0]
    table = np.zeros(top + 1, np.uint32)
    table[present] = np.arange(1, present.size + 1, dtype=np.uint32)
    return table[labels], table


def neighbours(blocks: Sequence[Block]) -> dict[tuple[int, int, int], list[tuple[int, Block]]]:
    """For each block (by index), the blocks across a face of its core that its context reaches into: those whose
    core begins where its own ends along an axis and overlaps it along the other two (on a regular grid, the next
    block along each axis). Each pair is found once, from the block before the face."""
    beginning: dict[tuple[int, int], list[Block]] = defaultdict(list)
    for block in blocks:
        for axis in range(3):
            beginning[(axis, block.core[axis][0])].append(block)
    out: dict[tuple[int, int, int], list[tuple[int, Block]]] = {}
    for block in blocks:
        found = []
        for axis in range(3):
            for other in beginning.get((axis, block.core[axis][1]), ()):
                beside = all(block.core[k][0] < other.core[k][1] and other.core[k][0] < block.core[k][1]
                             for k in range(3) if k != axis)
                if beside and block.context[axis][1] > other.core[axis][0]:
                    found.append((axis, other))
        out[block.index] = found
    return out


def halo_overlap(block: Block, other: Block) -> tuple[Span, Span, Span]:
    """Where this block's context lies in the other block's core: the strip both have labelled."""
    return tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(block.context, other.core))  # type: ignore


def mutual_best_pairs(mine: np.ndarray, theirs: np.ndarray, min_share: float = 0.5) -> list[tuple[int, int]]:
    """Pairs (my id, their id) that are each other's largest overlap in the strip, covering at least
    `min_share` of the smaller of the two objects' parts in the strip."""
    mine, theirs = mine.ravel().astype(np.int64), theirs.ravel().astype(np.int64)
    both = (mine > 0) & (theirs > 0)
    if not both.any():
        return []
    size_mine = np.bincount(mine)
    size_theirs = np.bincount(theirs)
    width = int(theirs.max()) + 1
    codes, counts = np.unique(mine[both] * width + theirs[both], return_counts=True)
    a, b = np.divmod(codes, width)
    order = np.argsort(-counts, kind="stable")
    best_of_a: dict[int, int] = {}
    best_of_b: dict[int, int] = {}
    for k in order:
        best_of_a.setdefault(int(a[k]), int(b[k]))
        best_of_b.setdefault(int(b[k]), int(a[k]))
    pairs = []
    for k in range(codes.size):
        ia, ib = int(a[k]), int(b[k])
        if best_of_a[ia] == ib and best_of_b[ib] == ia and counts[k] >= min_share * min(size_mine[ia],
                                                                                          size_theirs[ib]):
            pairs.append((ia, ib))
    return pairs


class UnionFind:
    """Equivalence classes of global object ids (0 is background and stays alone)."""

    def __init__(self, size: int) -> None:
        self.parent = np.arange(size, dtype=np.int64)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def final_ids(self) -> np.ndarray:
        """Consecutive ids 1..n, one per class, numbered by each class's smallest member; 0 maps to 0."""
        roots = self.parent.copy()
        while True:  # pointer jumping: every id points at its class's root after a few rounds
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                break
            roots = jumped
        _, inverse = np.unique(roots, return_inverse=True)  # roots are the smallest members, so order holds
        return inverse.astype(np.uint32)
