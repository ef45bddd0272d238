"""Training windows from (Z, Y, X) stacks, and the held-out validation block.

Everything here works on (Z, Y, X) stacks; a 2D image is a stack of one slice, and a 2D job simply draws
windows one slice thick. Windows are aimed at labelled objects half of the time and augmented alike in image
and targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..job.config import ConfigError
from ..planning.window import held_out_size
from ..models.normalisation import Normalisation

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (start, stop) for z, y, x


@dataclass(frozen=True)
class IntensityAugmentation:
    """How far training windows' intensities are pushed, in normalised units (0..1 between the training stack's
    0.5th and 99.5th percentiles). Each is drawn per window; a probability of 0 turns that part off."""

    contrast: tuple[float, float]  # factor around the window's mean, drawn log-uniformly
    brightness: float  # shift drawn from -brightness..brightness
    gamma: tuple[float, float] = (1.0, 1.0)  # on the 0..1 part of the intensities, drawn log-uniformly
    gamma_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)  # in-plane Gaussian blur (a section out of focus)
    blur_p: float = 0.0
    noise_sigma: tuple[float, float] = (0.03, 0.03)
    noise_p: float = 0.3


# What the stacks a model labels next differ in, where its labels came from: sessions, sections and tissue
# change brightness, contrast and gamma (darker or paler tissue: the chloroplast stack's unseen side, x >= 1600,
# has more dark tissue, 5th percentile 120 against 127 of the side it trains on), focus and noise (ranges like
# nnU-Net's defaults, which are there for the same reason).
DRIFT = IntensityAugmentation(contrast=(0.65, 1.5), brightness=0.25, gamma=(0.7, 1.5), gamma_p=0.3,
                              blur_sigma=(0.5, 1.5), blur_p=0.2, noise_sigma=(0.0, 0.08), noise_p=0.3)
MILD = IntensityAugmentation(contrast=(0.85, 1.15), brightness=0.1)  # before drift was measured
INTENSITY = DRIFT  # what WindowSampler applies (benchmarks/label_accuracy.py --intensity compares the two)


def jitter_intensity(x: np.ndarray, rng: np.random.Generator, how: IntensityAugmentation) -> np.ndarray:
    """One window's intensities pushed as another session or tissue might show them; (Z, Y, X) float32."""
    low, high = np.log(how.contrast)
    mean = np.float32(x.mean())
    x = (x - mean) * np.float32(np.exp(rng.uniform(low, high))) + mean
    x = x + np.float32(rng.uniform(-how.brightness, how.brightness))
    if how.gamma_p and rng.random() < how.gamma_p:
        inside = np.clip(x, 0.0, 1.0)
        x = x - inside + inside ** np.float32(np.exp(rng.uniform(*np.log(how.gamma))))
    if how.blur_p and rng.random() < how.blur_p:
        sigma = float(rng.uniform(*how.blur_sigma))
        x = ndimage.gaussian_filter(x, sigma=(0.0, sigma, sigma)[-x.ndim:])
    if how.noise_p and rng.random() < how.noise_p:
        x = x + rng.normal(0.0, float(rng.uniform(*how.noise_sigma)), size=x.shape).astype(np.float32)
    return x


def split_validation(shape: tuple[int, int, int], window: tuple[int, int, int], fraction: float,
                     has_labels: np.ndarray | None = None) -> tuple[Region, Region]:
    """Hold out a block at one end of an in-plane axis (a block, so validation never sees a pixel of a
    training window). Returns (train region, validation region).

    Of the four candidate ends (both ends of y and of x) that leave the window room to train, the one whose
    share of labelled pixels is closest to the whole stack's wins: a block of pure background would score
    nothing, and labels painted on only part of an image are common.
    """
    candidates = []
    for axis in (1, 2):
        size = held_out_size(shape[axis], window[axis], fraction)
        if size is None:
            continue
        length = shape[axis]
        for val_span, train_span in (((length - size, length), (0, length - size)), ((0, size), (size, length))):
            val, train = [(0, s) for s in shape], [(0, s) for s in shape]
            val[axis], train[axis] = val_span, train_span
            candidates.append((tuple(train), tuple(val)))
    if not candidates:
        axis = 1 if shape[1] >= shape[2] else 2
        raise ConfigError("window", f"{'zyx'[axis]} size {window[axis]} leaves no room for a validation block in "
                                    f"an image of {shape[axis]} pixels along {'zyx'[axis]}; use a window of at "
                                    f"most {max(1, shape[axis] - 32)}")
    if has_labels is None:
        return candidates[0]
    overall = float(has_labels.mean())

    def mismatch(candidate: tuple[Region, Region]) -> float:
        share = float(crop(has_labels, candidate[1]).mean())
        return abs(share - overall) if share > 0 else np.inf

    return min(candidates, key=mismatch)  # type: ignore[return-value]


def crop(array: np.ndarray, region: Region) -> np.ndarray:
    return array[(Ellipsis, *[slice(a, b) for a, b in region])]


class WindowSampler:
    """Random training windows from a region of a stack, half of them centred on a labelled object.

    Objects are often a small share of an EM stack (under 10% of the chloroplast set); uniform windows would
    mostly teach the network what background looks like.
    """

    def __init__(self, image: np.ndarray, target: np.ndarray, foreground: np.ndarray, region: Region,
                 window: tuple[int, int, int], normalisation: Normalisation, rng: np.random.Generator,
                 object_fraction: float = 0.5, augment: bool = True, known: np.ndarray | None = None) -> None:
        self.image, self.target, self.region, self.known = image, target, region, known
        self.window, self.norm, self.rng = window, normalisation, rng
        self.object_fraction, self.augment = object_fraction, augment
        for axis, ((a, b), w) in enumerate(zip(region, window)):
            if b - a < w:
                raise ConfigError("window", f"{'zyx'[axis]} size {w} is larger than the training region "
                                            f"({b - a} pixels)")
        fg = crop(foreground, region)
        if known is not None:
            fg = fg & crop(known, region)  # objects nobody vouches for teach nothing: aim at trusted ones
        coords = np.flatnonzero(fg[:, ::4, ::4])  # every 16th pixel is plenty to aim at objects
        self.object_coords = coords
        self._fg_shape = fg[:, ::4, ::4].shape
        # With partial labels the other windows aim at painted voxels, never at unpainted ones: those would
        # teach nothing (they add nothing to the loss).
        self.known_coords = None if known is None else np.flatnonzero(crop(known, region)[:, ::4, ::4])
        self.square = window[1] == window[2]

    def _corner(self) -> list[int]:
        aim = None
        if self.object_coords.size and self.rng.random() < self.object_fraction:
            aim = self.object_coords
        elif self.known_coords is not None and self.known_coords.size:
            aim = self.known_coords
        if aim is not None:
            z, y, x = np.unravel_index(self.rng.choice(aim), self._fg_shape)
            centre = (z, y * 4, x * 4)
            corner = [c + a - w // 2 + int(self.rng.integers(-(w // 4), w // 4 + 1))
                      for c, (a, _), w in zip(centre, self.region, self.window)]
        else:
            corner = [int(self.rng.integers(a, b - w + 1)) for (a, b), w in zip(self.region, self.window)]
        return [min(max(c, a), b - w) for c, (a, b), w in zip(corner, self.region, self.window)]

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(B, 1, Z, Y, X) float32 images, (B, ..., Z, Y, X) targets and, with partial labels, (B, Z, Y, X)
        painted masks, augmented alike."""
        xs, ys, ks = [], [], []
        for _ in range(batch):
            corner = self._corner()
            sl = tuple(slice(c, c + w) for c, w in zip(corner, self.window))
            x = self.norm.apply(self.image[sl])
            y = self.target[(Ellipsis, *sl)]
            if self.known is not None:
                # The mask rides along as one more target channel, so every flip and rotation moves it too.
                y = np.concatenate([y.reshape(-1, *y.shape[-3:]), self.known[sl][np.newaxis].astype(y.dtype)])
            if self.augment:
                x, y = self._augment(x, y)
            if self.known is not None:
                ks.append(y[-1].astype(bool))
                y = y[:-1] if self.target.ndim == 4 else y[0]
            xs.append(x)
            ys.append(y)
        return np.stack(xs)[:, np.newaxis], np.stack(ys), np.stack(ks) if ks else None

    def _augment(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        axes = [-1, -2] + ([-3] if self.window[0] > 1 else [])
        for axis in axes:
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        k = int(rng.integers(4)) if self.square else 2 * int(rng.integers(2))
        if k:
            x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
        x = jitter_intensity(np.asarray(x, np.float32), rng, INTENSITY)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


class MixedSampler:
    """Windows from several image + labels pairs in set shares: the corrected stack and the stacks a model was
    first trained on, say, so that adapting to new tissue does not forget the old.

    Each window's pair is drawn by its weight, so the shares hold on average over iterations even for a batch
    of one. Where one pair carries a trusted-voxel mask and another does not, the other's windows count
    everywhere (an all-True mask).
    """

    def __init__(self, samplers: Sequence[WindowSampler], weights: Sequence[float],
                 rng: np.random.Generator) -> None:
        total = float(sum(weights))
        self.samplers, self.rng = list(samplers), rng
        self.shares = np.asarray(weights, float) / total
        self.masked = any(s.known is not None for s in self.samplers)

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        counts = np.bincount(self.rng.choice(len(self.samplers), size=batch, p=self.shares),
                             minlength=len(self.samplers))
        xs, ys, ks = [], [], []
        for sampler, count in zip(self.samplers, counts):
            if not count:
                continue
            x, y, k = sampler.sample(int(count))
            xs.append(x)
            ys.append(y)
            ks.append(np.ones((x.shape[0], *x.shape[2:]), bool) if k is None else k)
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ks) if self.masked else None
