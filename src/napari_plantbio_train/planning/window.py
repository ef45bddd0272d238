"""Where a job's fields become concrete choices: the network it builds, the window it trains with, and every rule
that needs the data, the machine or the models folder to judge.

``config.py`` knows only the fields; this module knows what they mean for a given image on a given machine, so
the training loop, the command line's check before launching processes and the dock all ask it the same
questions and get the same answers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..job.config import ConfigError, TrainConfig
from ..models.network import levels, nearest_valid_size
from ..runtime import hardware

DEFAULT_WINDOW_XY = 256
DEFAULT_WINDOW_Z = 8


def stack_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """Every array is handled as (Z, Y, X); a 2D image is a stack of one slice."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    return None


DEFAULT_STEM_STRIDE = 1  # what a field left to the plan stands for before the plan has chosen
DEFAULT_DEPTH = 4
DEFAULT_BASE_CHANNELS = 16


def network_for(config: TrainConfig, image_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Constructor arguments of the network a job trains (input and output channels aside).

    A planned job has every field filled in (planning.plan). Before the plan, a field left empty stands for the
    least demanding choice the plan could make (stem stride 1, depth 4 or fewer where a given window needs it),
    so a window the user gave is judged by the networks it could still get. In 3D, z is halved at most as often
    as the window's z size allows: a stack of a few serial sections cannot be pooled along z as often as
    in-plane, whatever the voxel size says.
    """
    stem = config.stem_stride or DEFAULT_STEM_STRIDE
    kwargs: dict[str, Any] = dict(spatial_dims=config.spatial_dims,
                                  base_channels=config.base_channels or DEFAULT_BASE_CHANNELS,
                                  depth=config.depth or deepest(config, stem), anisotropy=config.anisotropy,
                                  stem_stride=stem)
    if config.flat_levels is not None and config.spatial_dims == 3:
        kwargs["flat_levels"] = config.flat_levels
    z_pools = _z_pools(config, image_shape)
    if z_pools is not None:
        kwargs["max_z_pools"] = z_pools
    return kwargs


def deepest(config: TrainConfig, stem: int, window: tuple[int, ...] | None = None) -> int:
    """The deepest network (at most DEFAULT_DEPTH levels) whose downsampling a window fits: the given one, or
    the job's own; without either, DEFAULT_DEPTH."""
    window = window or (tuple(int(w) for w in config.window) if config.window is not None else None)
    if window is None:
        return DEFAULT_DEPTH
    for depth in range(DEFAULT_DEPTH, 0, -1):
        net = levels(config.spatial_dims, depth=depth, anisotropy=config.anisotropy, stem_stride=stem,
                     max_z_pools=int(math.log2(window[0])) if config.spatial_dims == 3 and window[0] >= 1 else None,
                     flat_levels=config.flat_levels if config.spatial_dims == 3 else None)
        if all(w % d == 0 for w, d in zip(window[-len(net.divisor):], net.divisor)):
            return depth
    return 1


def _z_pools(config: TrainConfig, image_shape: tuple[int, ...] | None) -> int | None:
    if config.spatial_dims != 3:
        return None
    z = None
    if config.window is not None and len(config.window) == 3:
        z = int(config.window[0])
    elif image_shape is not None and stack_shape(image_shape) is not None:
        z = min(DEFAULT_WINDOW_Z, stack_shape(image_shape)[0])
    return int(math.log2(z)) if z is not None and z >= 1 else None


def divisor_for(config: TrainConfig, image_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """What every window axis must be divisible by, from the network the job builds."""
    net = network_for(config, image_shape)
    return levels(net["spatial_dims"], depth=net["depth"], anisotropy=net["anisotropy"],
                  stem_stride=net["stem_stride"], max_z_pools=net.get("max_z_pools"),
                  flat_levels=net.get("flat_levels")).divisor


def window_for(config: TrainConfig, image_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The window a job trains with: the given one, or a default that fits the image and the network."""
    if config.window is not None:
        window = tuple(int(w) for w in config.window)
        if config.spatial_dims == 2 and len(window) == 3 and window[0] == 1:
            window = window[1:]
        return window
    divisor = divisor_for(config, image_shape)
    xy = [DEFAULT_WINDOW_XY] * 2
    z = [DEFAULT_WINDOW_Z] if config.spatial_dims == 3 else []
    window = list(z + xy)
    if image_shape is not None:
        spatial = stack_shape(image_shape)[-len(window):]
        window = [min(w, (s // d) * d) if s >= d else w for w, s, d in zip(window, spatial, divisor)]
        window = room_to_validate(window, spatial, divisor, config.val_fraction)
    return tuple(max(d, (w // d) * d) for w, d in zip(window, divisor))


def room_to_validate(window: list[int], spatial: tuple[int, ...], divisor: tuple[int, ...],
                      fraction: float) -> list[int]:
    """A default window as large as a small image leaves no room beside it for the validation block: narrow it
    along the longer in-plane axis, to the largest size that does (if one does)."""
    axes = (-2, -1)
    if any(held_out_size(spatial[a], window[a], fraction) is not None for a in axes):
        return window
    axis = max(axes, key=lambda a: spatial[a])
    d = divisor[axis]
    fitting = [w for w in range(window[axis] // d * d, d - 1, -d) if held_out_size(spatial[axis], w, fraction)]
    if fitting:
        window = list(window)
        window[axis] = fitting[0]
    return window


def problems(config: TrainConfig, *, image_shape: tuple[int, ...] | None = None,
             labels_shape: tuple[int, ...] | None = None, models_dir: str | Path | None = None,
             resume: bool = False) -> list[ConfigError]:
    """Every rule the job breaks, its fields' own (``TrainConfig.problems``) and those that need the data's
    shapes, this machine's GPUs or the models folder, so a form can mark all wrong fields at once."""
    found = config.problems()

    def bad(name: str, message: str) -> None:
        found.append(ConfigError(name, message))

    if models_dir is not None and not any(p.field == "name" for p in found):
        _check_names(config, models_dir, resume, bad)
    if config.gpus is not None and not any(p.field == "gpus" for p in found):
        present = hardware.cuda_device_count()
        if config.gpus > present:
            bad("gpus", f"{config.gpus} requested but this machine has {present} CUDA GPU(s); use {present}")
    if not any(p.field in ("gpus", "cpu_processes") for p in found) and config.cpu_processes > 1 \
            and hardware.job_device(config) == "cuda":
        bad("cpu_processes", f"{config.cpu_processes} CPU processes, but this job trains on the GPU: set GPUs to 0 "
                             "for CPU processes, or use several GPUs instead")
    if found:
        return found  # window rules need a sane network description
    _check_window(config, image_shape, labels_shape, bad)
    return found


def validate(config: TrainConfig, **context: Any) -> TrainConfig:
    """Raise the first problem (the CLI prints one line); return the config so calls chain."""
    found = problems(config, **context)
    if found:
        raise found[0]
    return config


def _check_names(config: TrainConfig, models_dir: str | Path, resume: bool, bad) -> None:
    from ..models.store import ModelStore

    store = ModelStore(models_dir)
    state = store.state(config.name)
    taken = store.exists(config.name)
    if state.kind == "damaged" and not resume:
        bad("name", f"a model named {config.name!r} already exists in {models_dir} but is {state.why}: "
                    f"{state.advice}, or pick another name")
    elif taken and not resume:
        bad("name", f"a model named {config.name!r} already exists in {models_dir}; pick another name or resume it")
    elif state.kind in ("training", "unfinished"):
        # Never reused silently: a folder a job died in is the user's to remove.
        bad("name", f"the folder {state.folder} is {state.why}: {state.advice}")
    elif resume and not taken:
        bad("name", f"there is no model named {config.name!r} in {models_dir} to resume")
    if config.init_from is not None and not store.exists(str(config.init_from)):
        bad("init_from", f"there is no model named {config.init_from!r} in {models_dir} to continue from")
    elif config.init_from is not None and config.init_from == config.name:
        bad("init_from", "a continued model is a new version: give it a new name (or use resume)")


def held_out_size(length: int, window: int, fraction: float) -> int | None:
    """Pixels of an in-plane axis of ``length`` that the validation block takes (about ``fraction``, at least 32
    where the axis has them), leaving the window room to train beside it; None when fewer than 16 (or than the
    window) would be left to validate on. ``training.sampling.split_validation`` places the block by this rule."""
    size = min(max(int(round(length * fraction)), min(32, length)), length - window)
    return size if size >= min(16, window) else None


def smallest_image(config: TrainConfig, image_shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    """The smallest (y, x) image the job trains on: the network's smallest window, and room beside it along y or
    x for the validation block (whichever needs fewer pixels)."""
    dy, dx = divisor_for(config, image_shape)[-2:]

    def with_block(d: int) -> int:
        return next(n for n in range(d, 64 * d + 64) if held_out_size(n, d, config.val_fraction) is not None)

    return min(((with_block(dy), dx), (dy, with_block(dx))), key=lambda yx: yx[0] * yx[1])


def _check_window(config: TrainConfig, image_shape, labels_shape, bad) -> None:
    if image_shape is not None:
        stack = stack_shape(image_shape)
        if stack is None:
            bad("image", f"shape {tuple(image_shape)} is not a 2D image or a 3D stack of one channel")
            return
        if 0 in stack:
            bad("image", f"the image is empty (shape {tuple(image_shape)})")
            return
        # Fields left to the plan can still give the smallest network: judge the image by that one.
        y, x = smallest_image(config if config.depth is not None else config.replace(depth=1), image_shape)
        if config.window is None and not ((stack[1] >= y and stack[2] >= x) or (stack[1] >= x and stack[2] >= y)):
            bad("image", f"{stack[1]} x {stack[2]} pixels is too small to train on: the smallest image this job "
                         f"trains on is {y} x {x} (or {x} x {y}): the network's smallest window, and room beside "
                         "it for the validation block")
            return
        if config.spatial_dims == 3 and stack[0] < 2:
            bad("dims", "3d needs a stack of several slices; this image is a single 2D slice, use 2d")
            return
        if labels_shape is not None and stack_shape(labels_shape) != stack:
            bad("labels", f"shape {tuple(labels_shape)} differs from the image's {tuple(image_shape)}")
    window = window_for(config, image_shape)
    if len(window) != config.spatial_dims:
        want = "(z, y, x)" if config.spatial_dims == 3 else "(y, x)"
        bad("window", f"{window!r} must have {config.spatial_dims} sizes {want} in {config.dims} mode")
        return
    divisor = divisor_for(config, image_shape)
    for axis, w, d in zip("zyx"[-len(window):], window, divisor):
        if w % d:
            bad("window", f"{axis} size {w} does not fit the network's downsampling by {d}: "
                          f"the nearest valid size is {nearest_valid_size(w, d)}")
            return
    if image_shape is not None:
        spatial = stack_shape(image_shape)[-len(window):]
        for axis, w, s in zip("zyx"[-len(window):], window, spatial):
            if w > s:
                bad("window", f"{axis} size {w} is larger than the image ({s} pixels along {axis})")
                return
