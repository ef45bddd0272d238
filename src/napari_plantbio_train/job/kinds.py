"""What each kind of job means, in one place: modes, dimensionalities and number formats, and per mode the score
to watch, the output activation, the names of the output channels and the instance post-processing defaults.

Plain values only (no torch, no Qt): the form's choices, the command line's, the engine's checks, the saved
model and the exported bioimage.io package all read them from here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MODES: tuple[str, ...] = ("semantic", "instance")
DIMS: tuple[str, ...] = ("2d", "3d")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ModeFacts:
    score_name: str  # the validation score as the docks and the command line name it
    activation: str  # network outputs to probabilities: "softmax" over classes or "sigmoid" per map


FACTS = {
    "semantic": ModeFacts(score_name="mean IoU", activation="softmax"),
    "instance": ModeFacts(score_name="F1@0.5", activation="sigmoid"),
}
INSTANCE_CHANNELS = ("foreground", "contour")

# The seeded watershed that turns an instance model's maps into objects (postprocess.py); a trained model saves
# its own values, scaled to the objects it was trained on (postprocess.params_from_truth).
# fill_holes is 0 or 1 (organelles are painted solid; a model whose training objects held holes saves 0).
# min_confidence, in both modes, drops the objects (semantic: connected regions of a class) whose mean probability
# is below it; a semantic model saves the value its validation block measured (inference/semantic.py), an instance
# model 0: its wrong objects on unseen tissue were as sure as its right ones (chloroplast stack, 2026-12-07).
POSTPROCESS_DEFAULTS: dict[str, float] = {"fg_threshold": 0.5, "seed_threshold": 0.5, "min_seed_size": 16,
                                          "min_size": 64, "seed_prominence": 4.0, "anisotropy": 1.0,
                                          "fill_holes": 1.0, "min_confidence": 0.0}


def facts(mode: str) -> ModeFacts:
    try:
        return FACTS[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}") from None


def score_name(mode: str) -> str:
    return facts(mode).score_name


def activation(mode: str) -> str:
    return facts(mode).activation


def channel_names(mode: str, classes: Sequence[int] | None) -> tuple[str, ...]:
    """Output channels as people read them: foreground and contour, or "class <value>" per label value."""
    if mode == "instance":
        return INSTANCE_CHANNELS
    return tuple(f"class {value}" for value in classes or ())


def channel_id(name: str) -> str:
    """A channel name as an identifier (bioimage.io channel names): "class 3" -> "class_3"."""
    return name.replace(" ", "_")
