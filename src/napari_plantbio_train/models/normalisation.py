"""The intensity scale a model was trained at, saved with it.

Intensities are normalised with statistics of the whole training stack, never per window: the absolute
brightness is what tells a dark organelle from a dark but featureless region, and per-window scaling throws
that away. A continued model and every stack it labels use the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..job.config import ConfigError


@dataclass(frozen=True)
class Normalisation:
    """Maps raw intensities so that the 0.5th and 99.5th percentiles of the training stack become 0 and 1.

    Robust percentiles rather than min/max keep a few saturated pixels from squeezing the contrast; the values
    are not clipped, so nothing the network could use is lost, whatever the dtype or range of the stack.
    """

    low: float
    high: float

    @classmethod
    def fit(cls, image: np.ndarray | Sequence[np.ndarray], max_samples: int = 2_000_000) -> "Normalisation":
        """Percentiles of one stack, or of several pooled (each contributing in proportion to its size)."""
        stacks = [image] if isinstance(image, np.ndarray) else list(image)
        total = sum(int(np.size(s)) for s in stacks)
        step = max(1, total // max_samples)
        sample = np.concatenate([np.asarray(s).reshape(-1)[::step].astype(np.float64) for s in stacks])
        low, high = np.percentile(sample, [0.5, 99.5])
        if not np.isfinite(low) or not np.isfinite(high):
            raise ConfigError("image", "contains NaN or infinite values")
        if high <= low:
            high = low + 1.0  # a constant image: keep it finite rather than dividing by zero
        return cls(float(low), float(high))

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.asarray(array, dtype=np.float32) - np.float32(self.low)
        out *= np.float32(1.0 / (self.high - self.low))
        return out

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> "Normalisation":
        return cls(float(data["low"]), float(data["high"]))
