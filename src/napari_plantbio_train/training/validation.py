"""Scoring what a job holds out while it trains.

Each held-out box (holdout.py: the block of the first pair, held-out corrections, the lineage's block on the
original pair) is predicted exactly as auto-labelling will predict a new stack (sliding windows, Gaussian
blending, the same post-processing), so the validation score is an honest preview of what a user will get, and
the first box's arrays double as the preview layers shown in napari. Boxes of one part are pooled (object
counts add up), and the score is the mean of the parts': what the job learned, and what it kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..evaluation.metrics import (foreground_iou, instance_scores, match_instances, match_instances_per_slice,
                                  semantic_scores)
from ..inference.predictor import labels_from_probabilities, make_predictor
from ..inference.blockwise import count_windows
from ..inference.semantic import confirmed_confidence
from ..inference.sliding import predict_stack
from ..job.kinds import channel_names
from .material import window3
from .sampling import crop

if TYPE_CHECKING:
    from ..job.config import TrainConfig
    from ..models.store import ModelRecord
    from ..runtime.hardware import Verdict
    from .holdout import Box, Holdout
    from .material import Material

VALIDATION_OVERLAP = 0.25  # fewer windows than auto-label's 0.5 (inference/label.py): validation runs many times
PART_SCORES = ("learned_score", "kept_score")  # metrics (and metrics.csv columns) of the parts, by part name


@dataclass(frozen=True)
class RegionScore:
    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    channel_names: tuple[str, ...] = ()
    offset: tuple[int, int, int] | None = None  # of the preview arrays in the first pair (None: no preview)
    # Breaks ties of ``score`` when the loop keeps its best weights (instance: the parts' mean foreground IoU).
    # An instance score is an F1 over the few objects of a held-out block (7 on the chloroplast stack), so it
    # stays flat for thousands of iterations: there, F1 0.857 from iteration 1,000 to 4,500 kept iteration
    # 1,000, whose labels of the unseen part scored F1 0.42 where iteration 4,500's scored 0.48 (foreground IoU
    # of the block 0.80 against 0.91).
    tiebreak: float = 0.0
    # Semantic: the least mean probability of a predicted region the held-out labels confirm (None: none was), from
    # which the weights' ``min_confidence`` is set (inference/semantic.py).
    confidence: float | None = None


def score_region(model: torch.nn.Module, material: "Material", config: "TrainConfig", device: torch.device,
                 autocast: Any, given: Mapping[str, float] | None = None) -> RegionScore:
    """Predict every held-out box, label and score it; the parts' scores, their mean and the first box's maps.

    The metrics are the first part's (pooled over its boxes), with each part's score beside them
    (``learned_score``, ``kept_score``). Parts named in ``given`` are not predicted: their scores are taken as
    given (``parent_scores``)."""
    model.eval()
    predictor = make_predictor(model, config.mode, device, autocast)
    scores: dict[str, float] = {}
    overlaps: list[float] = []
    first: dict[str, float] | None = None
    confidences: list[float] = []
    preview: tuple[np.ndarray, np.ndarray, tuple[int, int, int]] | None = None
    for part in material.holdout.parts:
        if given and part.name in given:
            scores[f"{part.name}_score"] = float(given[part.name])
            continue
        judged = []
        for box in part.boxes:
            probabilities, labels, metrics, confidence = _score_box(predictor, material, config, box)
            judged.append(metrics)
            if confidence is not None:
                confidences.append(confidence)
            if preview is None and box.pair == 0:
                preview = (probabilities, labels, tuple(a for a, _ in box.region))  # type: ignore[assignment]
        pooled = _pooled(judged, config.mode)
        scores[f"{part.name}_score"] = pooled["score"]
        if math.isfinite(pooled.get("foreground_iou", math.nan)):
            overlaps.append(pooled["foreground_iou"])
        first = pooled if first is None else first
    score = float(np.mean(list(scores.values()))) if scores else math.nan
    metrics = {k: v for k, v in (first or {}).items() if k != "score"} | scores
    names = channel_names(config.mode, material.classes)
    tiebreak = float(np.mean(overlaps)) if overlaps else 0.0
    confidence = min(confidences) if confidences else None
    if preview is None:
        return RegionScore(score, metrics, channel_names=names, tiebreak=tiebreak, confidence=confidence)
    return RegionScore(score, metrics, preview[0], preview[1], names, preview[2], tiebreak, confidence)


def holdout_windows(material: "Material", skip: Iterable[str] = ()) -> int:
    """How many windows a validation predicts (the parts named in ``skip`` left out): what its time scales with."""
    window = window3(material.window)
    return sum(count_windows(box.region, window, VALIDATION_OVERLAP)
               for part in material.holdout.parts if part.name not in set(skip) for box in part.boxes)


def parent_scores(parent: "ModelRecord | None", holdout: "Holdout", verdict: "Verdict",
                  device: torch.device) -> dict[str, float]:
    """The parts of a new version's validation its parent's best weights have scored already: the lineage's kept
    block, which the first model validated on (its "learned" block) and every version since (its "kept" part).
    The version starts from those very weights, so the parent's recorded score there is the version's "before"
    on it, where both ran in the same number format on the same kind of device. Predicting the block again
    cost a proofreading round 10 of the 13 s its "before" validation took (150 of 186 windows, chloroplast
    stack, 2 cores), seconds taken from the round's minute of training."""
    kept = next((p for p in holdout.parts if p.name == "kept"), None)
    if (parent is None or kept is None or parent.best is None or not parent.best_parts or not parent.kept_block
            or not holdout.kept_block or parent.kept_block.get("digest") != holdout.kept_block.get("digest")
            or device.type != parent.device or not parent.precision
            or (parent.precision.get("precision"), parent.precision.get("isa_limit"))
            != (verdict.precision, verdict.isa_limit)):
        return {}
    if "kept_score" in parent.best_parts:
        return {"kept": float(parent.best_parts["kept_score"])}
    # A first model: its one part is the block itself, on its own first pair.
    parts = (parent.validation or {}).get("parts") or []
    if (parent.parent is None and len(parts) == 1 and len(parts[0].get("boxes", [])) == 1
            and parts[0]["boxes"][0].get("pair") == 0
            and parts[0]["boxes"][0].get("region") == parent.kept_block.get("region")
            and "learned_score" in parent.best_parts):
        return {"kept": float(parent.best_parts["learned_score"])}
    return {}


def _score_box(predictor: Any, material: "Material", config: "TrainConfig",
               box: "Box") -> tuple[np.ndarray, np.ndarray, dict[str, float], float | None]:
    stack, truth, target, known = material.pair(box.pair)
    image = material.normalisation.apply(crop(stack, box.region))
    probabilities = predict_stack(predictor, image, spatial_dims=config.spatial_dims, window=material.window,
                                  overlap=VALIDATION_OVERLAP, batch_size=config.batch_size)
    expected = crop(truth if config.mode == "instance" else target, box.region)
    # Held-out corrections are scored where they lie; a block wherever its pair's labels are trusted.
    scored = box.mask if box.mask is not None else (None if known is None else crop(known, box.region))
    _, metrics, labels = judge(probabilities, expected, config.mode, config.dims, material.classes,
                               material.postprocess, scored)
    confidence = (confirmed_confidence(probabilities, expected, material.classes or [], config.dims, scored)
                  if config.mode == "semantic" else None)
    return probabilities, labels, metrics, confidence


def _pooled(judged: list[dict[str, float]], mode: str) -> dict[str, float]:
    """One part's metrics from its boxes': object counts add up; a semantic part averages its boxes' IoUs."""
    if len(judged) == 1:
        out = dict(judged[0])
    elif mode == "instance":
        tp, n_pred, n_true = (sum(m[k] for m in judged) for k in ("tp", "n_pred", "n_true"))
        iou_sum = sum(m["tp"] * m["mean_matched_iou"] for m in judged if m["tp"])
        pooled = instance_scores(int(tp), int(n_pred), int(n_true), float(iou_sum))
        out = {k: pooled[k] for k in ("f1", "precision", "recall", "n_pred", "n_true", "tp", "mean_matched_iou")}
        out["foreground_iou"] = float(np.mean([m["foreground_iou"] for m in judged]))
    else:
        values = [m["mean_iou"] for m in judged if not math.isnan(m["mean_iou"])]
        out = {"mean_iou": float(np.mean(values)) if values else math.nan}
    out["score"] = out["f1"] if mode == "instance" else out["mean_iou"]
    return out


def judge(probabilities: np.ndarray, truth: np.ndarray, mode: str, dims: str, classes: list[int] | None,
          postprocess: dict[str, float] | None,
          known: np.ndarray | None = None) -> tuple[float, dict[str, float], np.ndarray]:
    """Labels from the probabilities and their scores against the truth (object ids for instance models,
    class indices for semantic ones), counting only where labels are trusted (`known`): predicted and true
    objects alike are cut to it, since outside it the labels vouch for nothing."""
    labels = labels_from_probabilities(probabilities, mode, dims, classes, postprocess)
    if mode == "instance":
        judged = labels if known is None else np.where(known, labels, 0)
        truth = truth if known is None else np.where(known, truth, 0)
        match = match_instances_per_slice if dims == "2d" else match_instances
        scores = match(judged, truth, 0.5)
        metrics = {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
                   "foreground_iou": foreground_iou(judged, truth), "n_pred": scores["n_pred"],
                   "n_true": scores["n_true"], "tp": scores["tp"], "mean_matched_iou": scores["mean_matched_iou"]}
        score = float(scores["f1"])
    else:
        predicted = probabilities.argmax(0)
        if known is not None:
            predicted, truth = predicted[known], truth[known]
        metrics = semantic_scores(predicted, truth, len(classes or []))
        score = float(metrics["mean_iou"])
    return score, {k: float(v) for k, v in metrics.items()}, labels
