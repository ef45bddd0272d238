"""Training windows as a stream, drawn in the training thread or in worker processes.

On a GPU, drawing and augmenting windows on the training thread leaves the device idle between steps, so
window sampling moves to ``DataLoader`` worker processes that keep a few batches ready. Two things make that
work from inside napari, a Qt process full of threads where ``fork`` is unsafe:

- workers start with ``spawn``, and everything they receive is picklable: plain arrays and numbers, never a
  layer, a widget or a closure;
- the stacks travel as torch tensors in shared memory (torch pickles tensors for worker processes as
  shared-memory handles), so a 2 GB stack is not copied into each worker.

On a CPU the network itself needs every core, and measured here in-thread sampling costs about 1% of an
iteration, so a CPU job draws windows in the training thread unless asked otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..models.normalisation import Normalisation
from .sampling import MixedSampler, Region, WindowSampler

Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # images, targets, trusted-voxel masks


@dataclass
class Pool:
    """What the samplers need, as plain values: (stack, target, foreground, known, region) per pair."""

    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, Region]]
    weights: tuple[float, ...]
    window: tuple[int, int, int]
    normalisation: Normalisation

    def sampler(self, rng: np.random.Generator) -> WindowSampler | MixedSampler:
        samplers = [WindowSampler(stack, target, foreground, region, self.window, self.normalisation, rng,
                                  known=known) for stack, target, foreground, known, region in self.pairs]
        return samplers[0] if len(samplers) == 1 else MixedSampler(samplers, self.weights, rng)

    def shared(self) -> "Pool":
        """The same pool with every array in shared memory, for worker processes."""
        return Pool([tuple(_to_shared(a) for a in pair) for pair in self.pairs],  # type: ignore[misc]
                    self.weights, self.window, self.normalisation)


def _to_shared(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).share_memory_()
    return value  # None (no mask) or a region


def _to_numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


class WindowStream(IterableDataset):
    """Endless batches; each worker draws from its own random stream, seeded from the job's seed and the
    stream's number: ``first_stream`` for the first worker (or the training thread), then counting up."""

    def __init__(self, pool: Pool, batch_size: int, seed: tuple[int, ...], first_stream: int = 0) -> None:
        super().__init__()
        self.pool, self.batch_size, self.seed, self.first_stream = pool, batch_size, seed, first_stream

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = self.first_stream + (0 if info is None else info.id)
        pool = Pool([tuple(_to_numpy(a) for a in pair) for pair in self.pool.pairs],  # type: ignore[misc]
                    self.pool.weights, self.pool.window, self.pool.normalisation)
        sampler = pool.sampler(np.random.default_rng([*self.seed, worker]))
        while True:
            x, y, known = sampler.sample(self.batch_size)
            # Tensors leave a worker through shared memory rather than being pickled byte by byte.
            yield torch.from_numpy(x), torch.from_numpy(y), None if known is None else torch.from_numpy(known)


def _whole_batch(batch: Batch) -> Batch:
    return batch  # a worker yields whole batches: nothing to collate


def window_batches(pool: Pool, batch_size: int, seed: tuple[int, ...], processes: int,
                   pin_memory: bool = False, first_stream: int | None = None) -> Iterator[Batch]:
    """Batches forever: from ``processes`` spawned workers with prefetching, or in this thread when 0.

    Streams are numbered 0 for the training thread and 1, 2, ... for workers unless ``first_stream`` says
    otherwise (the ranks of a data-parallel job number theirs across the job, see train.py).
    """
    if first_stream is None:
        first_stream = 0 if processes == 0 else 1
    if processes == 0:
        return iter(WindowStream(pool, batch_size, seed, first_stream))
    loader = DataLoader(WindowStream(pool.shared(), batch_size, seed, first_stream), batch_size=None,
                        num_workers=processes, collate_fn=_whole_batch, multiprocessing_context="spawn",
                        prefetch_factor=2, persistent_workers=True, pin_memory=pin_memory)
    return iter(loader)
