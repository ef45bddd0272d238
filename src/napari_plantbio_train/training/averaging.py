"""A running average of a job's weights: what it validates, keeps as its best and labels with.

Plate models trained by the same defaults labelled the rows never trained on at IoU 0.908, 0.912 and 0.928; what
told the runs apart was whether the last weights called one grey slot below the plate a pore (false pores of
100-700 pixels), and no augmentation or network change settled it (benchmarks/results/label_accuracy.txt,
2026-12-07). Averaging the weights over the end of training, as timm's ``ModelEmaV2`` and many detection and
segmentation recipes do, smooths away what the last few hundred windows happened to teach.

The average's decay follows timm's warm-up, ``min(MAX_DECAY, (1 + n) / (10 + n))`` after ``n`` updates, so it
spans about the last ninth of a job whatever its length: a 3,000-iteration plate job averages its last ~330
steps, a 300-iteration proofreading round its last ~35, and its first steps are not averaged with the random
initial weights. The decay never exceeds ``MAX_DECAY`` (about the last 500 steps of a long job).

The optimiser steps the network's own weights; this average only travels beside them: a full checkpoint carries
it so a resumed job goes on with the same average, and every data-parallel rank keeps an identical one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

MAX_DECAY = 0.998


class WeightAverage:
    """An exponential moving average of a network's floating-point weights (GroupNorm has no running buffers)."""

    def __init__(self, model: torch.nn.Module, state: dict[str, Any] | None = None) -> None:
        weights = model.state_dict()
        self.steps = 0
        self.weights = {k: v.detach().clone() for k, v in weights.items() if v.is_floating_point()}
        if state is not None:  # a resumed job's (an older checkpoint without one starts from its weights)
            self.steps = int(state["steps"])
            for k, v in state["weights"].items():
                self.weights[k].copy_(v)

    def decay(self) -> float:
        return min(MAX_DECAY, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One optimiser step's weights into the average."""
        self.steps += 1
        keep = self.decay()
        weights = model.state_dict()
        for k, average in self.weights.items():
            average.lerp_(weights[k], 1.0 - keep)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The network with the averaged weights inside the block, its own weights back after it."""
        weights = model.state_dict()
        own = {k: weights[k].detach().clone() for k in self.weights}
        with torch.no_grad():
            for k, average in self.weights.items():
                weights[k].copy_(average)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, value in own.items():
                    weights[k].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and an integer: a checkpoint holding them loads with ``weights_only``."""
        return {"steps": self.steps, "weights": {k: v.detach().to("cpu", copy=True) for k, v in self.weights.items()}}
