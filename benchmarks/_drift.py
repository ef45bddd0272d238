"""Tissue that drifts from the training part, made on a real stack whose truth is known.

The chloroplast stack's two halves do not differ in intensity (their percentiles agree within 1-8 grey levels),
so the proofreading queue's signs for drift (appearance, new tissue) had nothing to find there. What the issue
describes on other stacks is darker, flatter tissue the training part lacked. ``drifted`` makes it on the
columns from ``start`` on, behind a linear ramp (no edge for a model to find), leaving the truth as it is:

- ``darker``: contrast 0.6 about the region's mean, 35 grey levels darker, Gaussian noise of 6 grey levels:
  partly past the training windows' intensity jitter (contrast 0.65-1.5), partly inside it;
- ``none``: the stack as it is.
"""

from __future__ import annotations

import numpy as np

KINDS = ("none", "darker")
RAMP = 64  # columns over which the drift fades in


def drifted(image: np.ndarray, kind: str, start: int, seed: int = 0) -> np.ndarray:
    """``image`` (..., X) uint8 with ``kind`` of drift from column ``start`` on (a new array; ``none``: a copy)."""
    if kind not in KINDS:
        raise ValueError(f"drift must be one of {KINDS}, got {kind!r}")
    out = np.array(image, copy=True)
    if kind == "none":
        return out
    x = np.arange(image.shape[-1])
    weight = np.clip((x - start) / RAMP, 0.0, 1.0).astype(np.float32)
    region = np.asarray(image[..., start + RAMP:], np.float32)
    mean = float(region.mean()) if region.size else float(np.mean(image))
    values = np.asarray(image, np.float32)
    rng = np.random.default_rng(seed)
    changed = mean + 0.6 * (values - mean) - 35.0 + rng.normal(0.0, 6.0, values.shape).astype(np.float32)
    mixed = values + weight * (changed - values)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
