"""The plan: every field a user left on auto, chosen from the data, the machine and the budget.

nnU-Net plans an experiment from a fingerprint of its data and a memory budget, so its users change nothing and
get its best recipe. Here the budget is time: a job has minutes (its time limit) or an iteration total, and on a
2-core CPU a full-resolution 3D network runs at 5-35 s per step, which is 30-180 iterations in 15 minutes, where a
network at half the in-plane resolution with flat upper levels runs near 1 s and learns the job. So the plan
measures candidate networks' step times here (``timing``), and keeps the most detailed one that still reaches
enough iterations in the budget; on a GPU that is the full-resolution network. The window always fits the image
with room for the held-out block (a default is never refused). A field the user set is kept as given.

The plan is a value: ``make_plan`` computes it once, before training (in the command line, the dock's job
process, rank 0 of a distributed job); ``apply`` fills the job's auto fields with it, so the loop, the sampler,
the network and the post-processing receive concrete values; ``lines`` says what was chosen and why (the job's
start lines, ``train --plan``, the dock), and ``to_dict`` is kept in the model folder (``plan.json``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..job.config import ConfigError, TrainConfig
from ..models.network import levels
from ..runtime.hardware import Probe
from .fingerprint import Fingerprint, fingerprint
from .timing import TIMED_STEPS, step_seconds
from .window import deepest, held_out_size, network_for, room_to_validate

AUTO_FIELDS = ("voxel_size", "window", "stem_stride", "flat_levels", "depth", "base_channels", "lr", "batch_size",
               "validate_every", "contour_width")
# Enough iterations to learn, not the most: on the plate, 895 iterations of a 256x256 window beat 2,502 of 128x128
# by 0.11 IoU on rows never trained on; past this pace the plan takes the most detailed candidate (the list in
# _candidates says which are worth it on which device).
TARGET_ITERATIONS = 800
PLANNING_SHARE = 0.05  # of the budget (or a shorter job's length), at most, spent timing candidates beyond two
UNTIMED_FLOOR_S = 10.0  # a job without a time limit may always take these: small networks time in a fraction of one
UNTIMED_BUDGET_S = 3600.0  # without a time limit, the pace the plan aims for: TARGET_ITERATIONS within an hour
BASE_CHANNELS = 16
LR = 2e-3  # the benchmarks' rate at batch 2-4 (1e-3 learned slower in the same minutes)
ANISOTROPIC = 2.0  # z steps beyond this many in-plane steps are a coarse z, for distances and the network
DEFAULT_CONTOUR_WIDTH = 4  # pixels of boundary band between touching objects; 2 for objects under 12 px radius


@dataclass(frozen=True)
class Candidate:
    """A network and window the plan may choose, and its measured seconds per step here."""

    stem_stride: int
    flat_levels: int | None  # 3D only
    window: tuple[int, ...]
    depth: int
    batch_size: int
    seconds: float | None = None

    def describe(self) -> str:
        size = "x".join(str(w) for w in self.window)
        flat = "" if not self.flat_levels else f", {self.flat_levels} in-plane levels"
        pace = "" if self.seconds is None else f": {self.seconds:.2f} s per step"
        return f"window {size}, stem stride {self.stem_stride}{flat}, depth {self.depth}, batch {self.batch_size}{pace}"


@dataclass(frozen=True)
class Plan:
    auto: tuple[str, ...]  # the fields the plan chose (the others were given)
    values: dict[str, Any]  # the chosen values, by TrainConfig field
    voxel_source: str  # "given", "estimated from the image" or "isotropic by the image"
    budget_seconds: float
    timed: bool  # the budget is the job's time limit (else the plan's own pace for the iteration total)
    seconds_per_iteration: float | None
    expected_iterations: int | None
    candidates: tuple[Candidate, ...]
    fingerprint: Fingerprint
    device: str
    precision: str
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def apply(self, config: TrainConfig) -> TrainConfig:
        """The job with every auto field filled in: what the engine trains."""
        return config.replace(**{name: self.values[name] for name in self.auto if name in self.values})

    def lines(self) -> list[str]:
        """What a user reads: the choices, what they cost here, and why."""
        out = []
        chosen = {name: self.values.get(name) for name in self.auto}
        if chosen:
            shown = ", ".join(f"{name} {_show(value)}" for name, value in chosen.items())
            out.append(f"plan (fields left on auto): {shown}")
        if self.seconds_per_iteration is not None:
            pace = f"~{self.seconds_per_iteration:.2f} s per iteration here ({self.device}, {self.precision})"
            if self.timed:
                out.append(f"{pace}: ~{self.expected_iterations:,} iterations in "
                           f"{_minutes(self.budget_seconds)}")
            else:
                hours = (self.expected_iterations or 0) * self.seconds_per_iteration / 3600
                out.append(f"{pace}: the {self.expected_iterations:,} iterations take ~{_hours(hours)}; a time limit "
                           "ends the job earlier, with a checkpoint")
        out.extend(self.reasons)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"auto": list(self.auto), "values": {k: _plain(v) for k, v in self.values.items()},
                "voxel_source": self.voxel_source, "budget_seconds": self.budget_seconds, "timed": self.timed,
                "seconds_per_iteration": self.seconds_per_iteration, "expected_iterations": self.expected_iterations,
                "candidates": [{**{k: _plain(v) for k, v in c.__dict__.items()}, "description": c.describe()}
                               for c in self.candidates],
                "fingerprint": self.fingerprint.to_dict(), "device": self.device, "precision": self.precision,
                "reasons": list(self.reasons), "lines": self.lines()}


def auto_fields(config: TrainConfig) -> tuple[str, ...]:
    """The fields a user left to the plan: empty, or the voxel size at napari's default of 1 on every axis
    (unless the job continues a model, whose voxel size is the one its parent's network was built for)."""
    auto = [name for name in AUTO_FIELDS if getattr(config, name) is None]
    if (config.voxel_size is not None and tuple(float(v) for v in config.voxel_size) == (1.0, 1.0, 1.0)
            and config.init_from is None):
        auto.insert(0, "voxel_size")
    if config.spatial_dims == 2 and "flat_levels" in auto:
        auto.remove("flat_levels")
    return tuple(auto)


def make_plan(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *, device: torch.device,
              precision: str, threads: int | None = None, known: np.ndarray | None = None, measure: bool = True,
              prints: Fingerprint | None = None) -> Plan:
    """The plan for ``config`` on this data and this machine (``precision``: the verdict the job runs in).

    ``measure=False`` chooses the cheapest candidate without timing any, and lists every candidate (untimed) that
    a measured plan may time: the steps the precision probe must see work first (``timed_steps``). ``prints`` is a
    fingerprint already taken of this data.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    stack = image[np.newaxis] if image.ndim == 2 else image
    auto = auto_fields(config)
    reasons: list[str] = []
    threads = threads or (config.workers if device.type == "cpu" else os.cpu_count() or 1)
    if prints is None:
        prints = fingerprint(stack, labels[np.newaxis] if labels.ndim == 2 else labels, mode=config.mode,
                             dims=config.dims, known=known)
    outputs = out_channels(config, prints)
    values: dict[str, Any] = {}

    voxel, source = _voxel_size(config, prints, auto, reasons)
    values["voxel_size"] = voxel
    anisotropy = float(voxel[2]) / ((float(voxel[0]) + float(voxel[1])) / 2.0)

    budget = float(config.time_limit_min) * 60.0 if config.time_limit_min else UNTIMED_BUDGET_S
    # The pace a network must keep: enough iterations to learn in the budget, whatever the iteration total (a
    # job asked for 100 iterations should not get a network that learns nothing in 800).
    target = TARGET_ITERATIONS
    per_step = budget / target  # the slowest step that still reaches the target
    candidates = _candidates(config, stack.shape, device, anisotropy)
    timed: list[Candidate] = []
    chosen = candidates[0]
    if len(candidates) > 1 and measure:
        chosen, timed = _choose(candidates, config, outputs, device, precision, threads, budget, per_step, voxel)
    elif measure:
        seconds = _seconds(chosen, config, outputs, device, precision, threads, voxel, None)
        chosen = _with_seconds(chosen, seconds)
        timed = [chosen]
    else:
        timed = candidates
    values.update(window=chosen.window, stem_stride=chosen.stem_stride, depth=chosen.depth,
                  batch_size=chosen.batch_size)
    if config.spatial_dims == 3:  # concrete: how many levels are flat, whether chosen or from the voxel size
        values["flat_levels"] = sum(k[0] == 1 for k in _levels(config, chosen.depth, anisotropy, chosen.stem_stride,
                                                                chosen.flat_levels, chosen.window).kernels)
    if len(candidates) > 1:
        # Only a more detailed network is worth naming as too slow (a wider, coarser one may also be slower).
        too_slow = [c for c in timed if c.seconds is not None and c is not chosen and c.seconds > chosen.seconds
                    and _detail(c) < _detail(chosen)]
        if chosen.seconds and chosen.seconds > per_step:
            reasons.append(f"chose {chosen.describe()} (the fastest measured: none reaches ~{target:,} iterations "
                           f"in {_minutes(budget)} here; a longer time limit allows a more detailed network)")
        elif too_slow and chosen.seconds and too_slow[-1].seconds <= per_step:
            finer = too_slow[-1]
            reasons.append(f"chose {chosen.describe()} ({finer.describe()} would run ~{int(budget / finer.seconds):,} "
                           f"of the job's {config.iterations:,} iterations in {_minutes(budget)}; on a CPU the "
                           "coarser stem's extra iterations scored higher on unseen tissue)")
        elif too_slow and chosen.seconds:
            reasons.append(f"chose {chosen.describe()} (the most detailed network with ~{target:,} iterations in "
                           f"{_minutes(budget)} here; {too_slow[-1].describe()} would reach "
                           f"~{int(budget / too_slow[-1].seconds):,})")
        else:
            reasons.append(f"chose {chosen.describe()}")
    values["base_channels"] = BASE_CHANNELS
    values["lr"] = LR
    seconds = chosen.seconds
    expected = expected_iterations(config, seconds)
    values["validate_every"] = validation_interval(expected or config.iterations)
    values["contour_width"] = 2 if prints.radius is not None and prints.radius < 12 else DEFAULT_CONTOUR_WIDTH
    return Plan(auto=auto, values=values, voxel_source=source, budget_seconds=budget,
                timed=bool(config.time_limit_min), seconds_per_iteration=seconds, expected_iterations=expected,
                candidates=tuple(timed), fingerprint=prints, device=device.type, precision=precision,
                reasons=tuple(reasons))


def out_channels(config: TrainConfig, prints: Fingerprint) -> int:
    """The network's outputs: foreground and contour for instances, one per class (at least two) for semantics."""
    return 2 if config.mode == "instance" else max(2, len(prints.shares or ()))


def timed_steps(config: TrainConfig, plan: Plan) -> list[Probe]:
    """The training steps that measuring ``plan``'s candidates runs in this process: an unmeasured plan's whole
    list. A number format must have run every one of them in a probe first, since it can crash on one window and
    not another (runtime.hardware)."""
    voxel = tuple(plan.values["voxel_size"])
    outputs = out_channels(config, plan.fingerprint)
    return [Probe(_network(c, config, outputs, voxel), c.window, c.batch_size, config.mode) for c in plan.candidates]


# ----- the choices --------------------------------------------------------------------------------------------
def _voxel_size(config: TrainConfig, prints: Fingerprint, auto: tuple[str, ...],
                reasons: list[str]) -> tuple[tuple[float, float, float], str]:
    if "voxel_size" not in auto:
        return tuple(float(v) for v in config.voxel_size), "given"  # type: ignore[return-value]
    if config.spatial_dims == 2 or prints.z_steps is None:
        return (1.0, 1.0, 1.0), "not needed (2D)"
    steps = prints.z_steps
    if steps > ANISOTROPIC:
        reasons.append(f"voxel size unknown (1/1/1): z steps look like {steps:.1f} in-plane pixels "
                       f"({prints.z_detail}); z taken as {steps:.1f}x coarser. Set the voxel size to override")
        return (1.0, 1.0, round(steps, 2)), "estimated from the image"
    reasons.append(f"voxel size unknown (1/1/1): the stack looks isotropic ({prints.z_detail})")
    return (1.0, 1.0, 1.0), "isotropic by the image"


def _candidates(config: TrainConfig, shape: tuple[int, int, int], device: torch.device,
                anisotropy: float) -> list[Candidate]:
    """Networks and windows worth measuring, from the cheapest up, that honour every field the user gave and fit
    the image with room for the held-out block."""
    three = config.spatial_dims == 3
    gpu = device.type == "cuda"
    batch = config.batch_size or ((8 if gpu else 2) if three else (16 if gpu else 4))
    options: list[tuple[int, int | None, tuple[int, ...]]] = []
    # From the cheapest up (the measuring stops at the first that is too slow). Windows of at most 2^16 voxels:
    # on the parts of both stacks never trained on, every larger window lost, with as many iterations or more
    # (benchmarks/results/label_accuracy.txt). Chloroplast, 15 min on an AVX512-BF16 CPU in bf16: 4x128x128 F1
    # 0.51 (5,000 iterations), 8x256x256 0.39 (1,192), 4x256x256 0.31 (3,247); on an AVX2 CPU in fp32, 4x128x128
    # 0.46-0.57 (532-2,138) against the old hand recipe's 4x256x256 0.44 (245). Plate: 512x512 at stem stride 4
    # 0.68 IoU against 256x256 0.92 (15 min); below the size a wider view still pays (256x256 0.84 against 128x128
    # 0.74 in 5 min, with a third of the iterations).
    # Stem stride 1 lost on this CPU at the same 15 minutes with fewer iterations (chloroplast 4x128x128 F1 0.49
    # against 0.51; plate 256x256 IoU 0.85 against 0.92, bf16 on an AVX512-BF16 CPU), but the short jobs of the
    # tests learn only at stride 1: kept, until a rule tells the two apart.
    if three:
        for stem, flat, z, xy in ((2, 2, 4, 128), (1, 2, 4, 128)):
            options.append((stem, flat, (z, xy, xy)))
    else:
        for stem, xy in ((2, 128), (2, 256), (1, 256)):
            options.append((stem, None, (xy, xy)))
    if anisotropy > ANISOTROPIC and three:
        options = [(s, None if f == 0 else f, w) for s, f, w in options]  # the voxel size decides flatness too
    found: list[Candidate] = []
    for stem, flat, window in options:
        stem = config.stem_stride if config.stem_stride is not None else stem
        flat = config.flat_levels if config.flat_levels is not None else flat
        if config.window is not None:
            window = tuple(int(w) for w in config.window)
            window = window[1:] if not three and len(window) == 3 else window
        candidate = _fitted(config, shape, stem, flat, window, batch, anisotropy)
        if candidate is not None and candidate not in found:
            found.append(candidate)
    if not found and config.window is not None:
        raise ConfigError("window", f"{tuple(config.window)} fits none of the networks this job can build; check "
                                    "it against the nearest valid sizes planning.problems gives")
    if not found:  # nothing of the list fits (a tiny image): the smallest network that does
        found.append(_smallest(config, shape, batch, anisotropy))
    return found


def _fitted(config: TrainConfig, shape: tuple[int, int, int], stem: int, flat: int | None, window: tuple[int, ...],
            batch: int, anisotropy: float) -> Candidate | None:
    """The candidate fitted to the image: square in-plane, inside it, divisible by its network, and with room beside
    it for the held-out block (planning.window's rule); its depth fitted to the window. A window the user gave is
    kept as given: None where this network cannot take it."""
    three = config.spatial_dims == 3
    z, y, x = shape
    flat = flat if three else None
    if config.window is not None:
        given = tuple(int(w) for w in config.window)
        given = given[1:] if not three and len(given) == 3 else given
        depth = config.depth or deepest(config.replace(flat_levels=flat), stem, given)
        divisor = _levels(config, depth, anisotropy, stem, flat, given).divisor
        if any(w % d for w, d in zip(given, divisor)):
            return None
        return Candidate(stem, flat, given, depth, batch)
    wanted = list(window)
    if three:
        wanted[0] = min(wanted[0], z)
    side = min(wanted[-1], y, x)
    wanted[-2:] = [side, side]
    depth = config.depth or int(max(1, min(4, math.floor(math.log2(max(side // stem, 2) / 8)) + 1)))
    divisor = _levels(config, depth, anisotropy, stem, flat, wanted).divisor
    fitted = [max(d, (w // d) * d) for w, d in zip(wanted, divisor)]
    fitted = room_to_validate(fitted, (z, y, x)[-len(fitted):], divisor, config.val_fraction)
    fitted[-2:] = [min(fitted[-2:])] * 2  # square: every in-plane rotation (and 8 test-time variants) applies
    spatial = (y, x)
    if any(f > s for f, s in zip(fitted[-2:], spatial)):
        return None
    if all(held_out_size(s, f, config.val_fraction) is None for s, f in zip(spatial, fitted[-2:])):
        return None
    return Candidate(stem, flat, tuple(fitted), depth, batch)


def _levels(config: TrainConfig, depth: int, anisotropy: float, stem: int, flat: int | None,
            window: tuple[int, ...] | list[int]):
    three = config.spatial_dims == 3
    return levels(config.spatial_dims, depth=depth, anisotropy=anisotropy, stem_stride=stem,
                  max_z_pools=int(math.log2(window[0])) if three else None, flat_levels=flat if three else None)


def _smallest(config: TrainConfig, shape: tuple[int, int, int], batch: int, anisotropy: float) -> Candidate:
    z, y, x = shape
    three = config.spatial_dims == 3
    stem = config.stem_stride or 1
    depth = config.depth or 1
    side = min(y, x)
    window = [min(z, 2)] if three else []
    for _ in range(2):
        divisor = levels(config.spatial_dims, depth=depth, anisotropy=anisotropy, stem_stride=stem,
                         max_z_pools=1 if three else None).divisor
        xy = max(divisor[-1], (max(side // 2, 1) // divisor[-1]) * divisor[-1])
        if xy <= side or depth == 1:
            break
        depth = 1
    return Candidate(stem, None, tuple(window + [xy, xy]), depth, batch)


def _choose(candidates: list[Candidate], config: TrainConfig, out_channels: int, device: torch.device,
            precision: str, threads: int, budget: float, per_step: float,
            voxel: tuple[float, float, float]) -> tuple[Candidate, list[Candidate]]:
    """The most detailed candidate whose step takes at most ``per_step`` seconds (the target's pace: the finest
    stem stride first, then the largest window); the cheapest when none does. The list runs from the cheapest
    up, so measuring stops at the first that is too slow: the rest cost more."""
    timed: list[Candidate] = []
    best = None
    spent = 0.0  # what the timings cost, from their own figures: cached or not, the same plan stops at the same place
    for candidate in candidates:
        seconds = _seconds(candidate, config, out_channels, device, precision, threads, voxel, 3 * per_step)
        candidate = _with_seconds(candidate, seconds)
        timed.append(candidate)
        if seconds <= per_step:
            best = candidate if best is None else min(best, candidate, key=_detail)
        elif best is not None or len(timed) > 1:
            break
        spent += (1 + TIMED_STEPS) * seconds
        # A job without a time limit lasts its iterations, at least at the fastest pace measured: a job of a few
        # iterations is not held up by minutes of timing networks it would run for seconds.
        allowed = PLANNING_SHARE * budget if config.time_limit_min else max(
            PLANNING_SHARE * min(budget, config.iterations * min(c.seconds for c in timed)), UNTIMED_FLOOR_S)
        if len(timed) > 1 and spent > allowed:
            break  # measuring must not eat the job it plans (a 2-minute job spent 45 s here on busy cores)
    if best is not None and device.type == "cpu" and config.time_limit_min:
        best = _iterations_over_resolution(best, timed, config, budget, per_step)
    return (best or min(timed, key=lambda c: c.seconds or math.inf)), timed


def _iterations_over_resolution(best: Candidate, timed: list[Candidate], config: TrainConfig, budget: float,
                                per_step: float) -> Candidate:
    """On a CPU, a finer stem stride only where the time limit leaves it the job's whole iteration total.

    Measured in 15 minutes on the parts of both stacks never trained on (AVX512-BF16 CPU, bf16): the coarser stem
    with more iterations won, chloroplast 4x128x128 F1 0.51 at stride 2 (5,000 iterations) against 0.49 at stride 1
    (3,543), plate 256x256 IoU 0.92 (5,000) against 0.85 (2,794). A job that runs its total in either case (no time
    limit, or a short job the tests run) learns more per iteration at stride 1, so it keeps the finer stem.
    """
    if best.seconds is None or budget / best.seconds >= config.iterations:
        return best
    coarser = [c for c in timed if c.seconds is not None and c.seconds <= per_step and c.stem_stride > best.stem_stride]
    return min(coarser, key=_detail) if coarser else best


def _seconds(candidate: Candidate, config: TrainConfig, out_channels: int, device: torch.device, precision: str,
             threads: int, voxel: tuple[float, float, float], give_up_after: float | None) -> float:
    network = _network(candidate, config, out_channels, voxel)
    return step_seconds(network, candidate.window, candidate.batch_size, config.mode, device=device,
                        precision=precision, threads=threads, give_up_after=give_up_after)


def _network(candidate: Candidate, config: TrainConfig, out_channels: int,
             voxel: tuple[float, float, float]) -> dict[str, Any]:
    """The network the job builds if it takes this candidate: the job's own rule (planning.network_for) applied to
    the job with the candidate's fields, so that what is timed is what is trained."""
    job = config.replace(voxel_size=voxel, window=candidate.window, stem_stride=candidate.stem_stride,
                         depth=candidate.depth, flat_levels=candidate.flat_levels,
                         base_channels=config.base_channels or BASE_CHANNELS)
    return {**network_for(job), "in_channels": 1, "out_channels": out_channels}


def _detail(candidate: Candidate) -> tuple[int, int]:
    """Smaller is more detailed: resolution first (the stem stride), then context (the window's voxels)."""
    return candidate.stem_stride, -math.prod(candidate.window)


def _with_seconds(candidate: Candidate, seconds: float) -> Candidate:
    return replace(candidate, seconds=round(float(seconds), 3))


def version_interval(config: TrainConfig, seconds_per_iteration: float | None) -> int:
    """A new version's validation interval, at its parent's pace (the same network, so no candidate is timed
    again): a proofreading round of a minute runs ~150 iterations, and the parent's interval for its hours-long
    job (200 and more) would validate it once, at its end, so that its best checkpoint is merely its last."""
    expected = expected_iterations(config, seconds_per_iteration)
    return validation_interval(config.iterations if expected is None else expected)


def expected_iterations(config: TrainConfig, seconds_per_iteration: float | None) -> int | None:
    """The iterations a job runs at this pace: its total, or what its time limit allows (None: pace unknown)."""
    if not seconds_per_iteration:
        return None
    if not config.time_limit_min:
        return config.iterations
    return int(min(config.iterations, config.time_limit_min * 60.0 / seconds_per_iteration))


def validation_interval(iterations: int) -> int:
    """About ten validations a job, at round numbers, between 10 and 500 iterations apart (a short job on a slow
    machine still sees its curve)."""
    raw = max(10, min(500, iterations // 10))
    step = 5 if raw < 50 else 25 if raw < 200 else 50
    return int(max(10, (raw // step) * step))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else _minutes(hours * 3600)


def _minutes(seconds: float) -> str:
    """A budget in words: a 12-second test job is not "0 min"."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
