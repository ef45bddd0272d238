"""What a training job learns from: its image + labels pairs, checked and turned into targets once.

Everything here runs before the first iteration and knows nothing of the loop: which voxels are trusted
(known.py), the class list or instance maps, the intensity normalisation (the parent's when continuing, so
a new version's inputs keep their meaning), what validation holds out (holdout.py: a block of the first pair,
held-out corrections, the lineage's block on the original pair), and the fine-tuning defaults a continued
model starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import planning
from ..planning.plan import DEFAULT_CONTOUR_WIDTH
from ..inference.postprocess import params_from_truth
from ..inference.proofreading import training_statistics
from ..io.checks import as_stack, check_image, check_labels
from ..job.config import ConfigError, TrainConfig
from ..models.normalisation import Normalisation
from ..models.store import ModelRecord, ModelStore
from .holdout import Holdout, plan_holdout, whole
from .known import combine, painted, touched
from .loader import Pool
from .rehearsal import REHEARSE_SHARE, Rehearsal
from .sampling import MixedSampler, Region, WindowSampler, crop
from .targets import class_values, instance_targets, semantic_target


@dataclass
class Source:
    """One more image + labels pair, drawn from within its region (all of it, unless it holds the lineage's
    held-out block)."""

    stack: np.ndarray  # (Z, Y, X)
    target: np.ndarray
    foreground: np.ndarray
    known: np.ndarray | None
    region: Region | None = None  # None: the whole stack
    truth: np.ndarray | None = None  # the labels as given (instance ids), for validation


@dataclass
class Material:
    """Everything prepared once before the first iteration. The fields describe the first pair, the one
    validation is held out from; `extra` holds the other pairs and `weights` the share of windows of each."""

    stack: np.ndarray  # (Z, Y, X) raw image
    truth: np.ndarray  # (Z, Y, X) labels as given
    target: np.ndarray  # class indices (Z, Y, X) or instance maps (2, Z, Y, X), uint8
    classes: list[int] | None
    normalisation: Normalisation
    window: tuple[int, ...]  # as the network sees it: (z, y, x) in 3D, (y, x) in 2D
    foreground: np.ndarray  # (Z, Y, X) bool: where labelled objects are, for aiming windows at them
    train_region: Region
    val_region: Region
    postprocess: dict[str, float] | None  # watershed settings scaled to the labelled objects; semantic: a parent's
    known: np.ndarray | None = None  # (Z, Y, X) bool where labels can be trusted; None: everywhere
    extra: list[Source] = field(default_factory=list)
    weights: tuple[float, ...] = (1.0,)
    holdout: Holdout | None = None  # what validation scores (None: the block val_region of the first pair)
    statistics: dict | None = None  # the training objects and tiles, for the proofreading queue (plain data)

    def pool(self) -> Pool:
        """The pairs as the window samplers draw from them, each within its training region."""
        withheld = None if self.holdout is None else self.holdout.withheld
        known = self.known if withheld is None else self.known & ~withheld  # held-out corrections: never in the loss
        pairs = [(self.stack, self.target, self.foreground, known, self.train_region)]
        pairs += [(s.stack, s.target, s.foreground, s.known, s.region or whole(s.stack.shape)) for s in self.extra]
        return Pool(pairs, self.weights, window3(self.window), self.normalisation)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(stack, labels as given, target, trusted mask) of pair ``index`` (0: the first)."""
        if index == 0:
            return self.stack, self.truth, self.target, self.known
        source = self.extra[index - 1]
        return source.stack, source.truth, source.target, source.known

    def sampler(self, rng: np.random.Generator) -> WindowSampler | MixedSampler:
        return self.pool().sampler(rng)


def prepare(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *, previous: dict | None,
            extra_pairs: Sequence[tuple[np.ndarray, np.ndarray]] = (),
            auto_labels: np.ndarray | None = None, reviewed: np.ndarray | None = None,
            rehearsal: Rehearsal | None = None) -> Material:
    """Check the data against the job and derive targets, normalisation and what validation holds out.

    ``previous`` is the parent's (or, resuming, the model's own) description: classes, normalisation,
    post-processing and the lineage's kept block. ``reviewed`` marks voxels the user reviewed in the first
    labels (painted, erased or accepted), trusted with the corrections in a touched-only job. ``rehearsal``, the
    lineage's first data (rehearsal.py), is sampled last, in the share ``config.rehearse`` of all windows."""
    pairs = [_checked_pair(config, image, labels, "image", "labels")]
    pairs += [_checked_pair(config, i, lab, "extra_images", "extra_labels", index)
              for index, (i, lab) in enumerate(extra_pairs, start=2)]
    if rehearsal is not None:
        pairs.append(_checked_pair(config, rehearsal.stack, rehearsal.labels, "rehearse", "rehearse",
                                   len(pairs) + 1))
    if config.touched_only:
        stack, truth, known = pairs[0]
        if auto_labels is None:
            raise ConfigError("auto_labels", "trusting only the corrected regions needs the auto-label result the "
                                             "labels were corrected from")
        near = touched(truth, as_stack(auto_labels, field="auto_labels"), config.touched_margin,
                       anisotropy=config.anisotropy, per_slice=config.dims == "2d",
                       reviewed=None if reviewed is None else as_stack(reviewed, field="reviewed"))
        pairs[0] = (stack, truth, combine(known, near))
    if previous is not None:
        classes, normalisation = previous.get("classes"), Normalisation.from_dict(previous["normalisation"])
    else:
        classes = sorted(set().union(*(class_values(t) for _, t, _ in pairs))) if config.mode == "semantic" else None
        normalisation = Normalisation.fit([s for s, _, _ in pairs])
    if config.mode == "semantic" and len(classes) < 2:
        raise ConfigError("labels", "semantic training needs at least two label values (background and one class)")
    sources = [_source(config, stack, truth, known, classes) for stack, truth, known in pairs]
    window = planning.window_for(config, pairs[0][0].shape)
    for index, source in enumerate(sources[1:], start=2):
        _check_fits(source.stack.shape, window3(window), index)
    stack, truth, _ = pairs[0]
    first = sources[0]
    # With a trusted-voxel mask, the held-out block is placed by what is trusted, never by labels nobody vouches for.
    holdout = plan_holdout([(s.stack, s.known) for s in sources], window3(window), config.val_fraction,
                           first.foreground if first.known is None else first.known, touched=config.touched_only,
                           inherited=(previous or {}).get("kept_block"),
                           rehearsal=None if rehearsal is None else rehearsal.block)
    for source, region in zip(sources, holdout.train_regions):
        source.region = region
    train_region, val_region = holdout.train_regions[0], holdout.first_region
    # A version keeps its parent's settings (a semantic model's min_confidence until its own validation sets it).
    postprocess = (previous or {}).get("postprocess")
    if config.mode == "instance" and not postprocess:
        postprocess = params_from_truth(crop(truth, train_region), per_slice=config.dims == "2d",
                                        anisotropy=config.anisotropy)
    given = len(sources) - (rehearsal is not None)
    weights = tuple(float(w) for w in config.pair_weights) if config.pair_weights else (1.0,) * given
    if rehearsal is not None:  # its share of all windows: the given pairs keep their proportions between them
        weights += (sum(weights) * config.rehearse / (1 - config.rehearse),)
    material = Material(stack, truth, first.target, classes, normalisation, window, first.foreground, train_region,
                        val_region, postprocess, first.known, sources[1:], weights, holdout)
    material.statistics = _statistics(config, material, previous, rehearsed=rehearsal is not None)
    return material


def _statistics(config: TrainConfig, material: Material, previous: dict | None, *, rehearsed: bool = False) -> dict:
    """What the model trains on, as the proofreading queue compares new stacks with it: each pair within its
    training region and where it is trusted (held-out voxels are not trained on). A resumed job keeps what it
    saved; a continued one adds its own data to its parent's. The rehearsal pair (``rehearsed``: the last) is the
    lineage's first data, which the parent's statistics already hold: measured again, it would count twice and
    cost a round a few seconds (4.7 s of a continuation's 13 s set-up on the chloroplast stack)."""
    if previous and previous.get("resumed") and previous.get("statistics"):
        return previous["statistics"]
    inherited = (previous or {}).get("statistics")
    count = 1 + len(material.extra) - (rehearsed and inherited is not None)
    pairs = []
    for index, (stack, truth, _target, known) in enumerate(material.pair(i) for i in range(count)):
        region = material.train_region if index == 0 else material.extra[index - 1].region
        if index == 0 and material.holdout is not None and material.holdout.withheld is not None:
            known = known & ~material.holdout.withheld
        pairs.append((crop(stack, region), crop(truth, region) if config.mode == "instance" else None,
                      None if known is None else crop(known, region)))
    return training_statistics(pairs, material.normalisation, material.window, instance=config.mode == "instance",
                               previous=inherited)


def _checked_pair(config: TrainConfig, image: np.ndarray, labels: np.ndarray, image_field: str, labels_field: str,
                  index: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(stack, labels with the ignore value cleared, painted mask) of one pair, or an error naming its field."""
    which = "" if index is None else f"pair {index}: "
    try:
        check_labels(labels, field=labels_field)  # first: its words for painted colours are the labels' own
        stack, truth = as_stack(image, field=image_field), as_stack(labels, field=labels_field)
        check_image(stack, field=image_field)
        if stack.shape != truth.shape:
            raise ConfigError(labels_field, f"shape {np.shape(labels)} differs from the image's {np.shape(image)}")
        truth, known = painted(config, truth)
        if not truth.any():
            raise ConfigError(labels_field, "the labels layer is empty: paint at least one object")
    except ConfigError as error:
        raise ConfigError(error.field, which + error.message) from None
    return stack, truth, known


def _source(config: TrainConfig, stack: np.ndarray, truth: np.ndarray, known: np.ndarray | None,
            classes: list[int] | None) -> Source:
    if config.mode == "semantic":
        target = semantic_target(truth, classes).astype(np.uint8 if len(classes) < 256 else np.int64)
        return Source(stack, target, target > 0, known, truth=truth)
    width = config.contour_width or DEFAULT_CONTOUR_WIDTH  # a job planned (planning.plan) always has one
    target = instance_targets(truth, per_slice=config.dims == "2d", contour_width=width)
    target = target.astype(np.uint8)
    return Source(stack, target, target[0] > 0, known, truth=truth)


def _check_fits(shape: tuple[int, ...], window: tuple[int, int, int], index: int) -> None:
    for axis, w, s in zip("zyx", window, shape):
        if w > s:
            raise ConfigError("extra_images", f"pair {index}: the window's {axis} size {w} is larger than the "
                                              f"image ({s} pixels along {axis})")


INHERITED = ("mode", "dims", "voxel_size", "base_channels", "depth", "stem_stride", "flat_levels", "contour_width")


def inherit(config: TrainConfig, parent: ModelRecord) -> TrainConfig:
    """A continued model is the parent's network on new labels: what defines the network and the meaning of its
    outputs comes from the parent, whatever the new job says."""
    return config.replace(**{field: getattr(parent.config, field) for field in INHERITED})


def checked(config: TrainConfig, store: ModelStore, image_shape: tuple[int, ...], labels_shape: tuple[int, ...],
            *, resume: bool) -> TrainConfig:
    """The job as it will run (a continued model's inherited fields filled in), validated against its data:
    the training loop and the command line's check before launching processes use the same rules."""
    if config.init_from is not None and store.exists(str(config.init_from)):
        config = inherit(config, store.record(str(config.init_from)))
    return planning.validate(config, image_shape=image_shape, labels_shape=labels_shape, models_dir=store.root,
                           resume=resume)


FINE_TUNE_LR_FACTOR = 0.2
FINE_TUNE_MAX_ITERATIONS = 1000
# A proofreading round's training, whichever ends first with the iteration cap: the user waits for it, and on a
# 2-core CPU 1,000 iterations of a planned network take 5-10 minutes (benchmarks/proofread_round.py).
ROUND_MINUTES = 1.0


def continuation(parent: ModelRecord, name: str) -> TrainConfig:
    """The job that continues ``parent`` as a new version ``name``, before the user's own changes.

    Fine-tuning defaults: a fifth of the learning rate the lineage was trained from scratch with, and a short
    run, adapt the model to corrected labels, and half of its windows from the lineage's first data
    (rehearsal.py) keep it from forgetting what it learned. A version of a version keeps its parent's rate,
    already a fine-tuning one: a fifth of a fifth at each round left round 3 at 1/125 of the first model's rate
    (1.6e-5), where its minute changed no validation score (benchmarks/proofread_round.py, 2026-12-04). Data
    fields start empty: the corrected stack is new data; the validation interval is chosen for the new job's
    own length (planning.plan.version_interval).
    """
    from_scratch = parent.config.init_from is None
    return parent.config.replace(
        name=name, init_from=parent.name, lr=parent.config.lr * (FINE_TUNE_LR_FACTOR if from_scratch else 1.0),
        iterations=min(parent.config.iterations, FINE_TUNE_MAX_ITERATIONS), time_limit_min=None, image=None,
        labels=None, extra_images=(), extra_labels=(), pair_weights=None, touched_only=False, auto_labels=None,
        validate_every=None, rehearse=REHEARSE_SHARE)


def correction_round(parent: ModelRecord, name: str) -> TrainConfig:
    """The job "Retrain on corrections" starts after a proofreading round: the continuation of ``parent`` as
    ``name``, trusting only what the user corrected or reviewed (``touched_only``), since the rest of an
    auto-label result is the parent's own guess and teaches it nothing; for at most ``ROUND_MINUTES``."""
    return continuation(parent, name).replace(touched_only=True, time_limit_min=ROUND_MINUTES)


def round_number(parent: ModelRecord) -> int:
    """Which proofreading round continuing ``parent`` makes: 1 for a model trained from scratch, one more for
    each version it was continued from."""
    ancestors = parent.lineage or ((parent.parent,) if parent.parent else ())
    return len(ancestors) + 1


def window3(window: tuple[int, ...]) -> tuple[int, int, int]:
    """Windows are drawn from (Z, Y, X) stacks; a 2D job's window is one slice thick."""
    return window if len(window) == 3 else (1, *window)  # type: ignore[return-value]
