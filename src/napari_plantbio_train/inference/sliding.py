"""Whole-stack prediction from a network trained on small windows.

A network sees only a window at a time, and its outputs are least reliable near a window's border, where the
receptive field runs off the data. Overlapping windows are therefore blended with Gaussian weights that trust
each window's centre most; dividing the weighted sum by the summed weights keeps the blend an average, so a
network that returns its input returns the stack unchanged and a constant network leaves no seams. One code
path serves 2D and 3D windows (`ndim = image.ndim - 1`).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]
ProgressCallback = Callable[[int, int], None]

# Far corners of a 3D Gaussian window fall to ~1e-11; a floor keeps every voxel covered by a non-zero weight
# (no division by zero where only window corners reach) while staying far below the centre's weight of 1.
_MIN_WEIGHT = 1e-3


def gaussian_weights(window: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights for one window, highest at its centre, where the network sees the most context."""
    if any(size < 1 for size in window):
        raise ValueError(f"window sizes must be positive, got {window}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = np.ones((), dtype=np.float64)
    for size in window:
        sigma = size * sigma_scale
        offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
        profile = np.exp(-0.5 * (offsets / sigma) ** 2)
        weights = np.multiply.outer(weights, profile / profile.max())
    return np.maximum(weights, _MIN_WEIGHT).astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Window origins along one axis; the last is moved back to end at `size` so no edge goes unpredicted."""
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= window:
        return [0]
    stride = max(1, round(window * (1 - overlap)))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


class WindowCache:
    """Window outputs that several blocks of one labelling need, computed once.

    Blocks whose reaches overlap run the same windows of the whole-stack grid. A proofreading round's blocks are
    cut to the boxes around its corrections, many and adjacent, and without sharing they ran about as many
    windows for a third of the right half of the chloroplast stack as a whole-stack run did for all of it (913
    against 900, at overlap 0.25); shared, 522-558. ``uses`` counts, per window origin (in stack voxels), the
    blocks that will ask for it: an output is kept only while another block still needs it, and never more than
    ``most`` outputs at once (the windows along the faces between slabs of a large stack's blocks would otherwise
    all wait for the next slab); past that, a window is computed again.
    """

    def __init__(self, uses: Iterable[tuple[int, ...]], most: int) -> None:
        self._uses = Counter(uses)
        self._most = int(most)
        self._kept: dict[tuple[int, ...], torch.Tensor] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.computed = 0

    def take(self, origin: tuple[int, ...]) -> torch.Tensor | None:
        """The output another block computed at ``origin``, if it is kept (this use is then counted)."""
        with self._lock:
            value = self._kept.get(origin)
            if value is not None:
                self.hits += 1
                self._used(origin)
            return value

    def give(self, origin: tuple[int, ...], value: torch.Tensor) -> None:
        """The output just computed at ``origin``: kept if a later block needs it."""
        with self._lock:
            self.computed += 1
            if self._uses.get(origin, 0) > 1 and len(self._kept) < self._most:
                self._kept[origin] = value.clone()
            self._used(origin)

    def _used(self, origin: tuple[int, ...]) -> None:
        left = self._uses.get(origin, 0) - 1
        if left > 0:
            self._uses[origin] = left
        else:
            self._uses.pop(origin, None)
            self._kept.pop(origin, None)


def window_origins(spans: Iterable[tuple[int, int]], window: tuple[int, ...], overlap: float) -> list[tuple[int, ...]]:
    """The origins, in stack voxels, of the windows a sliding window runs over the region ``spans`` ((start,
    stop) per axis) of a larger stack."""
    spans = list(spans)
    return list(itertools.product(*([a + o for o in window_starts(b - a, w, overlap)]
                                    for (a, b), w in zip(spans, window))))


def sliding_window(predictor: Predictor, image: torch.Tensor, window: tuple[int, ...], *, overlap: float = 0.5,
                   batch_size: int = 1, out_channels: int | None = None, progress: ProgressCallback | None = None,
                   cache: WindowCache | None = None, origin: tuple[int, ...] | None = None) -> torch.Tensor:
    """Predict an image of any size with a network that takes fixed windows.

    `image` is (C, *spatial); the predictor gets (B, C, *window) batches on the image's device (it moves them to
    the model's device itself) and returns (B, K, *window); outputs are accumulated on the image's device, so a
    large stack can stay in host memory while the model runs on a GPU. `out_channels` only checks K, which is
    otherwise read from the first batch. `progress(done, total)` counts windows and is called after each batch.
    With `cache` and `origin` (where the image's first voxel lies in the stack), windows another block of the
    same stack computed are taken from the cache, and those computed here are given to it.
    """
    ndim = image.ndim - 1
    window = tuple(int(w) for w in window)
    if len(window) != ndim:
        raise ValueError(f"window {window} has {len(window)} axes but the image (C, *spatial) has {ndim} spatial "
                         f"axes (shape {tuple(image.shape)})")
    if any(w < 1 for w in window):
        raise ValueError(f"window sizes must be positive, got {window}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    spatial = tuple(image.shape[1:])
    padded, crop = _pad_to_window(image, window)
    padded_spatial = tuple(padded.shape[1:])

    weights = torch.from_numpy(gaussian_weights(window)).to(image.device)
    weight_sum = torch.zeros(padded_spatial, dtype=torch.float32, device=image.device)
    output: torch.Tensor | None = None

    starts = list(itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded_spatial, window))))
    shared = cache is not None and origin is not None and padded_spatial == spatial  # padded windows are this image's
    done = 0
    for batch in _batches(starts, batch_size):
        regions = [tuple(slice(o, o + w) for o, w in zip(start, window)) for start in batch]
        keys = [tuple(g + o for g, o in zip(origin, start)) for start in batch] if shared else []  # type: ignore
        outputs: list[torch.Tensor | None] = [cache.take(k) for k in keys] if shared else [None] * len(batch)  # type: ignore
        todo = [i for i, value in enumerate(outputs) if value is None]
        if todo:
            inputs = torch.stack([padded[(slice(None), *regions[i])] for i in todo])
            # Only the predictor runs in inference mode: tensors created there could not be updated in place
            # afterwards, and the returned output should be an ordinary tensor the caller may modify.
            with torch.inference_mode():
                result = predictor(inputs)
            _check_output(result, inputs, window, out_channels)
            result = result.to(device=image.device, dtype=torch.float32)
            for i, values in zip(todo, result):
                outputs[i] = values
                if shared:
                    cache.give(keys[i], values)  # type: ignore[union-attr]
        for region, values in zip(regions, outputs):
            assert values is not None
            if output is None:
                output = torch.zeros((values.shape[0], *padded_spatial), dtype=torch.float32, device=image.device)
            output[(slice(None), *region)] += values * weights
            weight_sum[region] += weights
        done += len(batch)
        if progress is not None:
            progress(done, len(starts))
    assert output is not None  # at least one window always exists
    output /= weight_sum
    return output[(slice(None), *crop)].contiguous() if padded_spatial != spatial else output


def predict_stack(predictor: Predictor, image: np.ndarray, *, spatial_dims: int, window: tuple[int, ...],
                  overlap: float = 0.5, batch_size: int = 1, progress: ProgressCallback | None = None,
                  cache: WindowCache | None = None, origin: tuple[int, int, int] | None = None) -> np.ndarray:
    """Raw predictor outputs (K, Z, Y, X) for a normalised (Z, Y, X) stack, in the way the model was trained.

    A 2D model never saw neighbouring slices, so each slice is predicted alone with a (y, x) window; a 3D model
    gets one sliding window over the whole volume. No activation is applied: logits stay logits. `progress(done,
    total)` counts windows (of all slices, for a 2D model); `cache` and `origin` as for ``sliding_window``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (Z, Y, X), got shape {image.shape}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(window) != spatial_dims:
        hint = "(y, x)" if spatial_dims == 2 else "(z, y, x)"
        raise ValueError(f"a {spatial_dims}D model needs a {hint} window, got {tuple(window)}")
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None]
    if spatial_dims == 3:
        return sliding_window(predictor, tensor, window, overlap=overlap, batch_size=batch_size,
                              progress=progress, cache=cache, origin=origin).numpy()

    # A 2D model slides a one-slice-thick window: each slice is predicted alone (the z weights of a size-1
    # window are all 1), while window batches fill across slice borders instead of ending with each slice.
    def one_slice(x: torch.Tensor) -> torch.Tensor:
        return predictor(x[:, :, 0]).unsqueeze(2)

    return sliding_window(one_slice, tensor, (1, *window), overlap=overlap, batch_size=batch_size,
                          progress=progress, cache=cache, origin=origin).numpy()


TTA_CHOICES = (0, 4, 8)


def tta_variants(n: int, window: tuple[int, ...]) -> list[tuple[tuple[int, ...], bool]]:
    """(flipped axes, transposed) pairs, applied to the in-plane axes (the last two) of a (B, C, *window) batch.

    In-plane only: the network saw flips and 90-degree rotations in-plane while training, while z of an EM stack
    is a different kind of axis (thicker sections, other texture). 4 variants are the flips; 8 add the
    transposed ones (with the flips, all eight in-plane rotations and mirror images), which need a square window.
    """
    if n not in TTA_CHOICES:
        raise ValueError(f"test-time augmentation takes {' or '.join(map(str, TTA_CHOICES))} variants, got {n}")
    if n == 8 and window[-1] != window[-2]:
        raise ValueError(f"8 test-time variants transpose y and x, which needs a square window, not {window}")
    flips: list[tuple[int, ...]] = [(), (-1,), (-2,), (-2, -1)]
    variants = [(f, False) for f in flips] if n else [((), False)]
    if n == 8:
        variants += [(f, True) for f in flips]
    return variants


def with_tta(predictor: Predictor, n: int, window: tuple[int, ...]) -> Predictor:
    """A predictor that averages the outputs of `n` flipped / transposed copies of each batch (0: unchanged).

    Each variant is mapped back before averaging, so the result stays aligned with the input; averaging
    probabilities (not logits) is what the predictors here return and what the older tool's "aug num" did.
    """
    variants = tta_variants(n, window)
    if len(variants) == 1:
        return predictor

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for flips, transpose in variants:
            t = x.flip(flips) if flips else x
            t = t.transpose(-2, -1) if transpose else t
            y = predictor(t.contiguous())
            y = y.transpose(-2, -1) if transpose else y
            y = y.flip(flips) if flips else y
            total = y.float() if total is None else total + y
        assert total is not None
        return total / len(variants)

    return averaged


def _check_output(result: torch.Tensor, inputs: torch.Tensor, window: tuple[int, ...],
                  out_channels: int | None) -> None:
    shape = tuple(result.shape)
    if (len(shape) == len(window) + 2 and shape[0] == inputs.shape[0] and shape[2:] == window
            and (out_channels is None or shape[1] == out_channels)):
        return
    channels = "K" if out_channels is None else str(out_channels)
    raise ValueError(f"predictor returned shape {shape} for input {tuple(inputs.shape)}; expected "
                     f"({inputs.shape[0]}, {channels}, {', '.join(map(str, window))})")


def _batches(items: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _pad_to_window(image: torch.Tensor, window: tuple[int, ...]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Grow axes shorter than the window, symmetrically, so a single window fits; return the crop that undoes it.

    Reflection keeps the padded region image-like (texture the network has seen), but it cannot reach further
    than the axis is long; such axes are padded by repeating their edge values instead.
    """
    crop = []
    for axis, (size, w) in enumerate(zip(image.shape[1:], window), start=1):
        if size >= w:
            crop.append(slice(None))
            continue
        before = (w - size) // 2
        positions = torch.arange(-before, w - before, device=image.device)
        if max(before, w - size - before) <= size - 1:
            positions = positions.abs()
            positions = torch.where(positions > size - 1, 2 * (size - 1) - positions, positions)
        else:
            positions = positions.clamp(0, size - 1)
        image = image.index_select(axis, positions)
        crop.append(slice(before, before + size))
    return image, tuple(crop)
