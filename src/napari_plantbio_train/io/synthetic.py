"""A small EM-like stack with touching organelles of two kinds, made on the spot from a fixed seed.

It gives new users (and the demo, and machines without the real data) something to train on at once: no
download, nothing stored in the package. What matters for a segmentation network is imitated, not the
physics: a textured cytoplasm whose brightness drifts across the field, dark lens-shaped "chloroplasts" with
stacked grana bands and a dark envelope, smaller round "mitochondria" that are lighter with a dark double rim,
organelles packed so that many touch, a blur like the microscope's, and shot noise. Sections are thick
(anisotropic voxels), as in serial-section EM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

VOXEL_SIZE_NM = (8.0, 8.0, 40.0)  # x, y, z: thin-section serial EM
KINDS = {1: "chloroplast", 2: "mitochondrion"}


@dataclass(frozen=True)
class SyntheticStack:
    image: np.ndarray  # (Z, Y, X) uint8
    semantic: np.ndarray  # (Z, Y, X) uint8: 0 background, 1 chloroplast, 2 mitochondrion
    instances: np.ndarray  # (Z, Y, X) uint16: one id per organelle, 0 background
    voxel_size: tuple[float, float, float] = VOXEL_SIZE_NM


def make_stack(shape: tuple[int, int, int] = (12, 256, 256), seed: int = 0,
               chloroplasts: int | None = None, mitochondria: int | None = None) -> SyntheticStack:
    """Organelles as ellipsoids; where two claim a voxel, the one it lies deeper inside wins, so neighbours
    meet along a shared boundary instead of overlapping, like packed organelles in a cell."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    area = shape[1] * shape[2]
    n_chl = chloroplasts if chloroplasts is not None else max(2, round(area / 5500))
    n_mito = mitochondria if mitochondria is not None else max(2, round(area / 7000))

    depth = np.full(shape, np.inf, np.float32)  # normalised ellipsoid radius of the owning organelle (< 1)
    instances = np.zeros(shape, np.uint16)
    kinds = [1] * n_chl + [2] * n_mito
    centres = _packed_centres(rng, len(kinds), shape[1:], spacing=27.0)
    stripes = np.zeros(shape, np.float32)
    for label, (kind, (cy, cx)) in enumerate(zip(kinds, centres), start=1):
        if kind == 1:  # lens-shaped: long, flat in-plane, through most of the sections
            radii = (shape[0] * rng.uniform(0.45, 0.7), rng.uniform(14, 19), rng.uniform(26, 36))
        else:
            radii = (shape[0] * rng.uniform(0.35, 0.55), rng.uniform(11, 15), rng.uniform(13, 19))
        cz = rng.uniform(0.3, 0.7) * shape[0]
        angle = rng.uniform(0, np.pi)
        box = tuple(slice(max(0, int(c - r - 1)), min(n, int(c + r + 2)))
                    for c, r, n in zip((cz, cy, cx), (radii[0], max(radii[1:]), max(radii[1:])), shape))
        dz = (z[box[0]] - cz)[:, None, None] / radii[0]
        dy = (y[box[1]] - cy)[None, :, None]
        dx = (x[box[2]] - cx)[None, None, :]
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        r = np.sqrt(dz ** 2 + (across / radii[1]) ** 2 + (along / radii[2]) ** 2)
        wins = (r < 1) & (r < depth[box])
        depth[box] = np.where(wins, r, depth[box])
        instances[box] = np.where(wins, label, instances[box])
        if kind == 1:  # grana: dark bands parallel to the long axis
            bands = 0.5 + 0.5 * np.cos(across * rng.uniform(0.7, 0.9) + rng.uniform(0, np.pi))
            stripes[box] = np.where(wins, bands, stripes[box])
    semantic = np.zeros(shape, np.uint8)
    kind_of = np.array([0, *kinds], np.uint8)
    semantic[:] = kind_of[instances]

    image = _render(rng, shape, instances, semantic, stripes)
    return SyntheticStack(image, semantic, instances)


def _packed_centres(rng: np.random.Generator, count: int, plane: tuple[int, int],
                    spacing: float) -> list[tuple[float, float]]:
    """Centres drawn one at a time, each kept only if it is at least `spacing` from the others: organelles
    end up close enough to touch but not stacked on top of each other."""
    centres: list[tuple[float, float]] = []
    for _ in range(count * 50):
        if len(centres) == count:
            break
        c = (rng.uniform(12, plane[0] - 12), rng.uniform(12, plane[1] - 12))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 >= spacing ** 2 for a, b in centres):
            centres.append(c)
    return centres


def _render(rng: np.random.Generator, shape: tuple[int, int, int], instances: np.ndarray, semantic: np.ndarray,
            stripes: np.ndarray) -> np.ndarray:
    """Intensities: cytoplasm texture with a slow drift, organelle interiors, dark envelopes, blur and noise."""
    drift = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=(2, 40, 40))
    drift *= 0.08 / (drift.std() + 1e-6)
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=(0.5, 1.5, 1.5))
    texture *= 0.05 / (texture.std() + 1e-6)
    image = 0.62 + drift + texture
    image[semantic == 1] = 0.42 - 0.22 * stripes[semantic == 1]
    image[semantic == 2] = 0.68
    # Envelopes: every organelle's border (also between two touching ones) is a dark membrane.
    inside = instances > 0
    border = np.zeros(shape, bool)
    for axis in (1, 2):
        for shift in (1, -1):
            border |= inside & (np.roll(instances, shift, axis=axis) != instances)
    thick = ndimage.binary_dilation(border, structure=np.ones((1, 3, 3), bool)) & inside
    image[thick] = 0.22
    ring = (semantic == 2) & ~thick & ndimage.binary_dilation(thick, structure=np.ones((1, 5, 5), bool))
    image[ring] = 0.3  # the mitochondrion's inner membrane: a second, fainter rim
    image = ndimage.gaussian_filter(image, sigma=(0.3, 1.0, 1.0))
    image = rng.poisson(np.clip(image, 0, 1) * 120.0) / 120.0  # shot noise of a low-dose image
    return np.clip(image * 255, 0, 255).astype(np.uint8)
