"""Proofreading rounds on the chloroplast stack: does correcting a few objects and training again pay, and how soon?

Trains on the left half (x < 1097) for ``--train-minutes`` with the defaults (``--recipe hand``: the old hand recipe),
then plays ``--rounds`` proofreading rounds on the
right half as two simulated users with the truth at hand:

- ``queue``: fixes the first ``--fix`` entries of the proofreading queue the dock shows (inference/proofreading.py:
  doubt, unlike the training objects, size and shape, new tissue), skipping objects already fixed;
- ``oracle``: fixes the ``--fix`` worst objects, as a careful biologist who sees every error would: predicted
  objects and missed true objects by their best IoU with the other side, lowest first.

A fix makes the labels the truth around the object (8 pixels in-plane) and over every true object it touches.
Each round then trains a new version for ``--continue-minutes`` (the dock's round by default) trusting only what
was corrected so far (``touched_only`` with the cumulative fixes as the reviewed mask), beside the crop of the
left half the first model keeps in its folder (``--rehearse``: its share of windows, the dock's 0.5 unless given),
and, with ``--balance 1 1``, the whole left half besides; then it labels the right half again: the blocks near
this round's fixes and the queue's next entries first (what the user waits for), the whole stack afterwards
(while they proofread), never over their fixes.
Two ways to train each round (``--strategy``): ``continue`` the last version, or retrain from the ``base`` model
on all corrections so far (round 1 is the same for both, and run once). ``--drift darker`` makes the right half's
right half darker, flatter and noisier (_drift.py): tissue the first model never saw, with its truth unchanged.

The bottom rows of the right half that hold ``--test-rows`` of its true objects are never shown to the users: no fix
reaches them and no object that touches them is picked. Its scores follow the same set of true objects through every
round, so they say whether corrections carry over to tissue nobody corrected; the "outside the fixes" scores of the
upper part lose the objects fixed each round (by round 3, 3-13 were left in earlier runs, and one object moved F1 by
0.1).

Reports, per user, strategy and round: the queue's precision (of its first 10 entries, how many are real errors:
predicted objects without a true object at IoU >= 0.5; beside it the doubt-only ranking's and the share of errors
among all objects), matched-object F1 and AP50 on the upper part of the right half outside the fixes so far and on
the never-shown lower part, before and after the round, the new version's validation scores (held-out corrections,
left-half block; before and best), each phase's seconds and the seconds the user waits (all but the relabelling of
the whole stack).

    .venv/bin/python benchmarks/proofread_round.py [--train-minutes 10] [--continue-minutes 1] [--rounds 3]
    # end-to-end check on a crop in a few minutes:
    .venv/bin/python benchmarks/proofread_round.py --train-minutes 0.3 --continue-minutes 0.2 --crop 640 512

Run it alone. Results are appended to benchmarks/results/proofread_round.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drift import KINDS, drifted  # noqa: E402
from _results import append  # noqa: E402
from train_real import DATA, JOBS  # noqa: E402

from napari_plantbio_train.evaluation.evaluate import evaluate  # noqa: E402
from napari_plantbio_train.inference.label import LabelSettings, label_stack  # noqa: E402
from napari_plantbio_train.inference.proofreading import queue_for, with_queue  # noqa: E402
from napari_plantbio_train.inference.relabel import merge_relabelled, round_regions  # noqa: E402
from napari_plantbio_train.inference.uncertainty import rank_objects  # noqa: E402
from napari_plantbio_train.job.config import TrainConfig  # noqa: E402
from napari_plantbio_train.job.events import run_to_end  # noqa: E402
from napari_plantbio_train.models.store import ModelStore  # noqa: E402
from napari_plantbio_train.training.loop import train  # noqa: E402
from napari_plantbio_train.training.material import ROUND_MINUTES, continuation  # noqa: E402
from napari_plantbio_train.training.rehearsal import REHEARSE_SHARE  # noqa: E402

SPLIT_X = 1097
FIX_RING = 8  # in-plane pixels of truth painted around a fixed object
FIRST = 10  # the queue's precision is measured over its first this many entries


def scores_outside(labels: np.ndarray, truth: np.ndarray, fixed: np.ndarray) -> dict[str, float]:
    """Scores with every object that touches a corrected region left out of both sides."""
    drop_pred = np.unique(labels[fixed])
    drop_true = np.unique(truth[fixed])
    pred = np.where(np.isin(labels, drop_pred[drop_pred > 0]), 0, labels)
    true = np.where(np.isin(truth, drop_true[drop_true > 0]), 0, truth)
    scores = evaluate(pred, true, "instance")
    return {k: round(float(scores[k]), 4) for k in ("f1_50", "ap_50", "n_pred", "n_true", "foreground_iou")}


def best_iou(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """For each object of ``a``, its largest IoU with an object of ``b`` (0 for none)."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    size_a, size_b = np.bincount(a), np.bincount(b)
    both = (a > 0) & (b > 0)
    width = int(b.max()) + 1
    codes, overlap = np.unique(a[both] * width + b[both], return_counts=True)
    ia, ib = np.divmod(codes, width)
    iou = overlap / (size_a[ia] + size_b[ib] - overlap)
    out = {int(i): 0.0 for i in np.flatnonzero(size_a) if i}
    for i, v in zip(ia, iou):
        out[int(i)] = max(out[int(i)], float(v))
    return out


def real_errors(labels: np.ndarray, truth: np.ndarray) -> set[int]:
    """Predicted objects with no true object at IoU >= 0.5 (above 0.5 a match is one to one)."""
    return {i for i, v in best_iou(labels, truth).items() if v < 0.5}


def precision_at(ids: list[int], errors: set[int]) -> float:
    first = ids[:FIRST]
    return round(sum(i in errors for i in first) / max(1, len(first)), 3)


def picks(user: str, labels: np.ndarray, truth: np.ndarray, queue: list, fixed: np.ndarray, cut: int,
          count: int) -> list[tuple[str, int]]:
    """What the user fixes this round: ("pred", id) objects of the labels or ("true", id) missed true objects,
    none reaching the never-shown rows from ``cut`` on."""
    fixed_ids = _mostly_in(labels, fixed) | _ids(labels[:, cut:])
    if user == "queue":
        return [("pred", e.id) for e in queue if e.id not in fixed_ids][:count]
    worst = [(v, -int(np.count_nonzero(labels == i)), "pred", i) for i, v in best_iou(labels, truth).items()
             if i not in fixed_ids]
    missed_ids = _mostly_in(truth, fixed) | _ids(truth[:, cut:])
    worst += [(v, -int(np.count_nonzero(truth == i)), "true", i) for i, v in best_iou(truth, labels).items()
              if v < 0.5 and i not in missed_ids]
    return [(kind, i) for _, _, kind, i in sorted(worst)[:count]]


def _mostly_in(labels: np.ndarray, mask: np.ndarray) -> set[int]:
    inside = np.bincount(labels[mask].ravel(), minlength=int(labels.max()) + 1)
    sizes = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    return {int(i) for i in np.flatnonzero(inside * 2 > sizes) if i}


def _ids(labels: np.ndarray) -> set[int]:
    return {int(i) for i in np.unique(labels) if i}


def fix(labels: np.ndarray, truth: np.ndarray, chosen: list[tuple[str, int]], cut: int) -> np.ndarray:
    """The voxels the user repaints for the chosen objects: around each, and every true object it touches, all
    above the never-shown rows from ``cut`` on."""
    region = np.zeros(labels.shape, bool)
    for kind, i in chosen:
        region |= (labels == i) if kind == "pred" else (truth == i)
    region = ndimage.binary_dilation(region, structure=np.ones((1, 3, 3), bool), iterations=FIX_RING)
    touched = np.unique(truth[region])
    repainted = region | np.isin(truth, touched[touched > 0])
    repainted[:, cut:] = False
    return repainted


def never_shown_from(truth: np.ndarray, share: float) -> int:
    """The first of the bottom rows that hold ``share`` of the true objects (by their centres): never shown to the
    simulated users, scored every round (the row count when none is held back). Cut by objects, not rows, so that
    the share says how many the users keep to fix (on the chloroplast stack's right half, 0.5 leaves 20 on each
    side of row 1141)."""
    ids = np.unique(truth)
    ids = ids[ids > 0]
    if share <= 0 or not len(ids):
        return truth.shape[1]
    rows = [c[1] for c in ndimage.center_of_mass(np.ones(truth.shape), truth, ids)]
    return int(np.ceil(np.quantile(rows, 1.0 - share)))


def part_scores(labels: np.ndarray, truth: np.ndarray, fixed: np.ndarray, cut: int) -> dict[str, dict]:
    """Scores outside the fixes on the part the user sees and on the never-shown part (empty when there is none)."""
    seen, unseen = (slice(None), slice(0, cut)), (slice(None), slice(cut, None))
    out = {"seen": scores_outside(labels[seen], truth[seen], fixed[seen])}
    if cut < labels.shape[1]:
        out["unseen"] = scores_outside(labels[unseen], truth[unseen], fixed[unseen])
    return out


def relabel(model: str, image: np.ndarray, layer: np.ndarray, reviewed: np.ndarray, near: list, models_dir: Path,
            settings: LabelSettings) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Label again as the dock does: near the corrections first, then the whole stack, each merged into the layer
    around the user's work; (the new layer, the new uncertainty map, seconds of each part and the share of the
    stack labelled first)."""
    layer = layer.copy()
    t = time.perf_counter()
    first, _ = run_to_end(label_stack(model, image, models_dir=models_dir, settings=settings, near=near,
                                      uncertainty=True))
    merge_relabelled(layer, first.labels, first.cores, reviewed)
    near_seconds = time.perf_counter() - t
    t = time.perf_counter()
    whole, _ = run_to_end(label_stack(model, image, models_dir=models_dir, settings=settings, uncertainty=True))
    merge_relabelled(layer, whole.labels, whole.cores, reviewed)
    share = sum(np.prod([b - a for a, b in c]) for c in first.cores) / layer.size
    return layer, whole.uncertainty, {"relabel_near": near_seconds, "relabel_whole": time.perf_counter() - t,
                                      "near_share": round(float(share), 3)}


class NothingToFix(Exception):
    """A round without a correction cannot train (a first model that labels nothing leaves the queue empty)."""


def first_fields(recipe: str) -> dict:
    """What the first model is trained with: a user's fields only (the plan chooses the rest), or the hand recipe."""
    return dict(JOBS["chloroplast3d"]) if recipe == "hand" else dict(mode="instance", dims="3d")


def train_first(name: str, image: np.ndarray, truth: np.ndarray, minutes: float, recipe: str,
                models_dir: Path) -> None:
    """The first model, on the left half: bounded by ``minutes`` alone, on every core (queue_precision.py's too)."""
    job = TrainConfig(name=name, iterations=100_000, iteration_save=100_000, time_limit_min=minutes,
                      workers=os.cpu_count() or 1, **first_fields(recipe))
    run_to_end(train(job, image, truth, models_dir=models_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--continue-minutes", type=float, default=ROUND_MINUTES,
                        help="the dock's round (training.material.ROUND_MINUTES) unless given")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fix", type=int, default=10)
    parser.add_argument("--users", nargs="+", choices=("queue", "oracle"), default=["queue", "oracle"])
    parser.add_argument("--strategy", nargs="+", choices=("continue", "base"), default=["continue", "base"],
                        help="from round 2: continue the last version, or retrain the base on all corrections")
    parser.add_argument("--touched-margin", type=int, default=24)
    parser.add_argument("--balance", type=float, nargs=2, default=(1.0, 0.0), metavar=("CORRECTED", "LEFT"),
                        help="shares of the corrected half and the left half (the dock's round: the corrections "
                             "alone, 1 0)")
    parser.add_argument("--rehearse", type=float, default=REHEARSE_SHARE,
                        help="share of a round's windows from the first model's data kept in its folder "
                             "(training/rehearsal.py; the product's default unless given, 0: none)")
    parser.add_argument("--overlap", type=float, default=LabelSettings.overlap,
                        help="of the auto-label windows (the product's default unless given)")
    parser.add_argument("--block-voxels", type=int, default=LabelSettings.block_voxels,
                        help="largest block of the relabelling (near: blocks cut to the corrections' boxes)")
    parser.add_argument("--next", type=int, default=10, help="queue entries after the fixed ones relabelled first")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("Y", "X"),
                        help="rows 0..Y and X columns on each side of the split: a quick end-to-end check")
    parser.add_argument("--recipe", choices=("defaults", "hand"), default="defaults",
                        help="the first model: the plan's choices (what a user gets) or train_real's hand recipe")
    parser.add_argument("--test-rows", type=float, default=0.5, metavar="SHARE",
                        help="share of the right half's true objects (its bottom rows) never shown to the "
                             "users, scored every round")
    parser.add_argument("--round-lr", type=float,
                        help="a round's learning rate (the product's continuation rate unless given: a fifth of "
                             "the first model's)")
    parser.add_argument("--first-model", type=Path, metavar="FOLDER",
                        help="a model this script trained on the left half before (its folder): skip that training")
    parser.add_argument("--drift", choices=KINDS, default="none",
                        help="make the right half's right half drift from the training part (_drift.py)")
    args = parser.parse_args()
    image = tifffile.imread(DATA / "chloroplast3d" / "image.tif")
    truth_all = tifffile.imread(DATA / "chloroplast3d" / "labels.tif")
    rows, width = (slice(None), None) if args.crop is None else (slice(0, args.crop[0]), args.crop[1])
    left = (slice(None), rows, slice(0 if width is None else SPLIT_X - width, SPLIT_X))
    right = (slice(None), rows, slice(SPLIT_X, None if width is None else SPLIT_X + width))
    left_image, left_truth = np.ascontiguousarray(image[left]), np.ascontiguousarray(truth_all[left])
    image, truth = np.ascontiguousarray(image[right]), np.ascontiguousarray(truth_all[right])
    image = drifted(image, args.drift, image.shape[-1] // 2)
    header = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} proofread_round {vars(args)}",
              f"load average before: {os.getloadavg()}"]
    print("\n".join(header), flush=True)
    stamp = int(time.time())
    cut = never_shown_from(truth, args.test_rows)
    header.append(f"never shown: rows {cut}..{truth.shape[1]} of the right half")
    print(header[-1], flush=True)
    workers = os.cpu_count() or 1
    if args.first_model:
        models_dir, base = args.first_model.parent, args.first_model.name
    else:
        models_dir, base = Path(tempfile.mkdtemp(prefix="plantbio-proofread-")), f"round-{stamp}"
        train_first(base, left_image, left_truth, args.train_minutes, args.recipe, models_dir)
    store = ModelStore(models_dir)
    settings = LabelSettings(overlap=args.overlap, block_voxels=args.block_voxels)
    window = store.record(base).window

    t = time.perf_counter()
    start, _ = run_to_end(label_stack(base, image, models_dir=models_dir, uncertainty=True, settings=settings))
    start = with_queue(start, image)
    initial = {"labels": start.labels.astype(np.uint32), "queue": list(start.queue),
               "uncertainty": start.uncertainty, "seconds": time.perf_counter() - t}
    lines = list(header)

    def report(row: dict) -> None:
        lines.append(json.dumps(row))
        print(lines[-1], flush=True)

    for user in args.users:
        shared: dict | None = None  # round 1 is the same for every strategy
        for strategy in args.strategy:
            state = dict(model=base, layer=initial["labels"].copy(), queue=initial["queue"],
                         uncertainty=initial["uncertainty"], fixed=np.zeros(image.shape, bool))
            history = []
            for number in range(1, args.rounds + 1):
                if number == 1 and shared is not None:
                    state, row = dict(shared["state"]), dict(shared["row"], strategy=strategy)
                else:
                    try:
                        state, row = play_round(number, user, strategy, state, image, truth,
                                                cut, (left_image, left_truth), base, store, settings, window,
                                                args, stamp, workers)
                    except NothingToFix as reason:
                        report({"user": user, "strategy": strategy, "round": number, "skipped": str(reason)})
                        break
                    if number == 1:
                        shared = {"state": dict(state), "row": row}
                if number == 1:
                    row["seconds"]["label_first"] = round(initial["seconds"])
                history.append(row)
                report(row)
            if not history:
                continue
            final_fixed = state["fixed"]
            report({"user": user, "strategy": strategy, "summary": True,
                    "initial_outside_all_fixes": part_scores(initial["labels"], truth, final_fixed, cut),
                    "after_all_rounds": history[-1]["after"],
                    "f1_gain_round_1": {part: round(history[0]["after"][part]["f1_50"] - scores["f1_50"], 4)
                                        for part, scores in history[0]["before"].items()},
                    "waiting_seconds": [r["waiting_seconds"] for r in history]})
    lines.append(f"load average after: {os.getloadavg()}")
    print(lines[-1], flush=True)
    append("proofread_round", lines)
    return 0


def play_round(number: int, user: str, strategy: str, state: dict, image: np.ndarray, truth: np.ndarray,
               cut: int, original: tuple[np.ndarray, np.ndarray], base: str, store: ModelStore,
               settings: LabelSettings, window: tuple[int, ...], args: argparse.Namespace, stamp: int,
               workers: int) -> tuple[dict, dict]:
    """One round: rank, fix by script, train a new version, label again. Returns the new state and its row."""
    seconds: dict[str, float] = {}
    layer, queue, fixed_before = state["layer"], state["queue"], state["fixed"]
    errors = real_errors(layer, truth)
    open_ids = [e.id for e in queue if e.id not in _mostly_in(layer, fixed_before)]
    doubt = [o.id for o in rank_objects(layer, state["uncertainty"]) if o.id in set(open_ids)]
    open_errors = errors & set(open_ids)
    t = time.perf_counter()
    chosen = picks(user, layer, truth, queue, fixed_before, cut, args.fix)
    fixed = fixed_before | fix(layer, truth, chosen, cut)
    if not chosen or not (fixed & ~fixed_before).any():
        raise NothingToFix(f"round {number}: the {user} user found nothing to fix ({len(queue)} queue entries)")
    # The truth's ids above the layer's, so that a repainted object never shares an id with one left as it was.
    corrected = np.where(fixed, truth.astype(np.uint32) + np.uint32(layer.max()), layer).astype(np.uint32)
    seconds["fix"] = time.perf_counter() - t

    parent = store.record(state["model"] if strategy == "continue" or number == 1 else base)
    name = f"round-{stamp}-{user}-{strategy}-{number}"
    job = continuation(parent, name).replace(
        iterations=100_000, iteration_save=100_000, time_limit_min=args.continue_minutes, workers=workers,
        touched_only=True, touched_margin=args.touched_margin, rehearse=args.rehearse,
        pair_weights=tuple(args.balance) if args.balance[1] else None)
    if args.round_lr:
        job = job.replace(lr=args.round_lr)
    extra = [original] if args.balance[1] else []
    t = time.perf_counter()
    # Trusted: everything corrected so far (the reviewed mask), whatever the new version's parent labelled.
    run_to_end(train(job, image, corrected, extra_pairs=extra, auto_labels=layer, reviewed=fixed,
                     models_dir=store.root))
    seconds["continue"] = time.perf_counter() - t
    record = store.record(name)

    picked = [i for kind, i in chosen if kind == "pred"]
    upcoming = [i for i in open_ids if i not in picked][:args.next]
    if record.kept_parent:
        # As the dock does: a version that kept its parent's weights labels as the layer is labelled; nothing is
        # relabelled or ranked again, and the queue goes on where it was.
        after_layer, uncertainty, queue_after = corrected, state["uncertainty"], queue
        times = {"relabel_near": 0.0, "relabel_whole": 0.0, "near_share": 0.0}
        seconds.update(relabel_near=0.0, relabel_whole=0.0, queue=0.0)
    else:
        near = round_regions(image.shape, fixed & ~fixed_before, corrected, upcoming, window,
                             overlap=settings.overlap)
        after_layer, uncertainty, times = relabel(name, image, corrected, fixed, near, store.root, settings)
        seconds.update({k: v for k, v in times.items() if k != "near_share"})
        t = time.perf_counter()
        _, queue_after = queue_for(record, after_layer, image, uncertainty)
        seconds["queue"] = time.perf_counter() - t
    waiting = seconds["fix"] + seconds["continue"] + seconds["relabel_near"]
    row = {"user": user, "strategy": strategy, "round": number, "model": name,
           "queue_precision_at_10": precision_at(open_ids, open_errors),
           "doubt_precision_at_10": precision_at(doubt, open_errors),
           "error_share": round(len(open_errors) / max(1, len(open_ids)), 3),
           "fixed_objects": len(chosen), "fixed_voxels_share": round(float(fixed.mean()), 4),
           "before": part_scores(layer, truth, fixed, cut), "after": part_scores(after_layer, truth, fixed, cut),
           "validation": {"before": record.before, "best": record.best_score, "best_parts": record.best_parts,
                          "best_iteration": record.best_iteration, "iterations": record.iterations_done},
           "near_share": times["near_share"], "seconds": {k: round(v, 1) for k, v in seconds.items()},
           "waiting_seconds": round(waiting)}
    new_state = dict(model=name, layer=after_layer, queue=queue_after, uncertainty=uncertainty, fixed=fixed)
    return new_state, row


if __name__ == "__main__":
    sys.exit(main())
