"""Scoring the held-out block while a model trains.

The block is predicted exactly as auto-labelling will predict a new stack (sliding windows, Gaussian blending,
the same post-processing), so the validation score is an honest preview of what a user will get, and the
same arrays double as the preview layers shown in napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..evaluation.metrics import foreground_iou, match_instances, match_instances_per_slice, semantic_scores
from ..inference.predictor import labels_from_probabilities, make_predictor
from ..inference.sliding import predict_stack
from ..job.kinds import channel_names
from .sampling import crop

if TYPE_CHECKING:
    from ..job.config import TrainConfig
    from .material import Material

VALIDATION_OVERLAP = 0.25  # fewer windows than auto-label's 0.5: validation runs many times per job


@dataclass(frozen=True)
class RegionScore:
    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    channel_names: tuple[str, ...] = ()


def score_region(model: torch.nn.Module, material: "Material", config: "TrainConfig", device: torch.device,
                 autocast: Any) -> RegionScore:
    """Predict the held-out block, then label and score it."""
    model.eval()
    image = material.normalisation.apply(crop(material.stack, material.val_region))
    probabilities = predict_stack(make_predictor(model, config.mode, device, autocast), image,
                                  spatial_dims=config.spatial_dims, window=material.window,
                                  overlap=VALIDATION_OVERLAP, batch_size=config.batch_size)
    truth = crop(material.truth if config.mode == "instance" else material.target, material.val_region)
    known = None if material.known is None else crop(material.known, material.val_region)
    args = (probabilities, truth, config.mode, config.dims, material.classes, material.postprocess, known)
    score, metrics, labels = judge(*args)
    return RegionScore(score, metrics, probabilities, labels, channel_names(config.mode, material.classes))


def judge(probabilities: np.ndarray, truth: np.ndarray, mode: str, dims: str, classes: list[int] | None,
          postprocess: dict[str, float] | None,
          known: np.ndarray | None = None) -> tuple[float, dict[str, float], np.ndarray]:
    """Labels from the probabilities and their scores against the truth (object ids for instance models,
    class indices for semantic ones), counting only where labels were painted (`known`)."""
    labels = labels_from_probabilities(probabilities, mode, dims, classes, postprocess)
    if mode == "instance":
        judged = labels if known is None else np.where(known, labels, 0)
        match = match_instances_per_slice if dims == "2d" else match_instances
        scores = match(judged, truth, 0.5)
        metrics = {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
                   "foreground_iou": foreground_iou(judged, truth), "n_pred": scores["n_pred"],
                   "n_true": scores["n_true"]}
        score = float(scores["f1"])
    else:
        predicted = probabilities.argmax(0)
        if known is not None:
            predicted, truth = predicted[known], truth[known]
        metrics = semantic_scores(predicted, truth, len(classes or []))
        score = float(metrics["mean_iou"])
    return score, {k: float(v) for k, v in metrics.items()}, labels
