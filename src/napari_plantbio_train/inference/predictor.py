"""From network outputs to what a user sees: probabilities (the mode's activation) and labels (a seeded
watershed for instance models, the most likely class for semantic ones). Validation and auto-labelling share
these, so a validation score previews exactly what auto-labelling gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..job.kinds import POSTPROCESS_DEFAULTS, activation
from .postprocess import instances_from_maps
from .semantic import semantic_labels


def make_predictor(model: torch.nn.Module, mode: str, device: torch.device, autocast: Any):
    """Network outputs to probabilities: sigmoid per map for instance models, softmax for semantic ones."""

    sigmoid = activation(mode) == "sigmoid"

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = model(x.to(device)).float()
        return (logits.sigmoid() if sigmoid else logits.softmax(1)).cpu()

    return predictor


def labels_from_probabilities(probabilities: np.ndarray, mode: str, dims: str, classes: list[int] | None,
                              postprocess: dict[str, float] | None = None) -> np.ndarray:
    """Instance: seeded watershed to one id per object. Semantic: the most likely class, as its label value,
    where its region is sure enough (semantic.py)."""
    settings = {**POSTPROCESS_DEFAULTS, **(postprocess or {})}
    if mode == "instance":
        return instances_from_maps(probabilities[0], probabilities[1], per_slice=dims == "2d", **settings)
    return semantic_labels(probabilities, classes or [], dims, settings["min_confidence"])
