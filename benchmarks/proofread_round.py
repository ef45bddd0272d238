"""One proofreading round on the chloroplast stack: does correcting a few objects and training again pay?

Trains on the left half (x < 1097) for ``--train-minutes``, auto-labels the right half with an uncertainty map,
then acts as a user with the truth at hand: the ``--fix`` most uncertain objects (by the ranking the dock
shows, not by their score) are replaced by the truth around them. The model is continued (a new version,
``--init-from``) for ``--continue-minutes`` on the right half with these corrected labels, trusting only the
corrected regions (``touched_only``, unless ``--trust-all``), together with the left half it was trained on
(``--balance``: shares of windows from the corrected and the original pair; ``--balance 1 0`` leaves the left
half out), and the right half is labelled again. Reports matched-object F1 on the right half, leaving out the
corrected regions, before and after, and the wall time of the round (label, correct, continue, label).

    .venv/bin/python benchmarks/proofread_round.py [--train-minutes 10] [--continue-minutes 3] [--fix 10]

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
from _results import append  # noqa: E402
from train_real import DATA, JOBS  # noqa: E402

from napari_plantbio_train.job.config import TrainConfig  # noqa: E402
from napari_plantbio_train.evaluation.evaluate import evaluate  # noqa: E402
from napari_plantbio_train.job.events import run_to_end  # noqa: E402
from napari_plantbio_train.inference.label import LabelSettings, label_stack  # noqa: E402
from napari_plantbio_train.models.store import ModelStore  # noqa: E402
from napari_plantbio_train.training.material import continuation  # noqa: E402
from napari_plantbio_train.training.loop import train  # noqa: E402
from napari_plantbio_train.inference.uncertainty import rank_objects  # noqa: E402

SPLIT_X = 1097


def scores_outside(labels: np.ndarray, truth: np.ndarray, fixed: np.ndarray) -> dict[str, float]:
    """Scores with every object that touches a corrected region left out of both sides."""
    drop_pred = np.unique(labels[fixed])
    drop_true = np.unique(truth[fixed])
    pred = np.where(np.isin(labels, drop_pred[drop_pred > 0]), 0, labels)
    true = np.where(np.isin(truth, drop_true[drop_true > 0]), 0, truth)
    scores = evaluate(pred, true, "instance")
    return {k: round(float(scores[k]), 4) for k in ("f1_50", "ap_50", "n_pred", "n_true", "foreground_iou")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--continue-minutes", type=float, default=3.0)
    parser.add_argument("--fix", type=int, default=10)
    parser.add_argument("--touched-margin", type=int, default=24)
    parser.add_argument("--trust-all", action="store_true", help="train on the whole corrected half")
    parser.add_argument("--balance", type=float, nargs=2, default=(1.0, 1.0), metavar=("CORRECTED", "LEFT"))
    parser.add_argument("--overlap", type=float, default=0.25,
                        help="of the auto-label windows (0.25 labels the half in about half the time of 0.5)")
    parser.add_argument("--first-model", type=Path, metavar="FOLDER",
                        help="a model this script trained on the left half before (its folder): skip that training")
    args = parser.parse_args()
    image = tifffile.imread(DATA / "chloroplast3d" / "image.tif")
    truth = tifffile.imread(DATA / "chloroplast3d" / "labels.tif")
    left, right = (slice(None), slice(None), slice(0, SPLIT_X)), (slice(None), slice(None), slice(SPLIT_X, None))
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} proofread_round {vars(args)}",
             f"load average before: {os.getloadavg()}"]
    stamp = int(time.time())
    if args.first_model:
        models_dir, first = args.first_model.parent, ModelStore(args.first_model.parent).record(args.first_model.name)
        first = first.config
    else:
        models_dir = Path(tempfile.mkdtemp(prefix="plantbio-proofread-"))
        first = TrainConfig(name=f"round-{stamp}", iterations=100_000, iteration_save=100_000,
                            time_limit_min=args.train_minutes, workers=os.cpu_count() or 1, **JOBS["chloroplast3d"])
        run_to_end(train(first, image[left], truth[left], models_dir=models_dir))

    round_start = time.perf_counter()
    phases = {}
    settings = LabelSettings(overlap=args.overlap)
    before, _ = run_to_end(label_stack(first.name, image[right], models_dir=models_dir, uncertainty=True,
                                       settings=settings))
    phases["label"] = time.perf_counter() - round_start
    ranked = rank_objects(before.labels, before.uncertainty)[:args.fix]
    # The user's fix: around each doubtful object (and its neighbourhood), the labels become the truth.
    fixed = ndimage.binary_dilation(np.isin(before.labels, [o.id for o in ranked]), iterations=8)
    right_truth = truth[right]
    touched = np.unique(right_truth[fixed])
    fixed |= np.isin(right_truth, touched[touched > 0])  # a corrected object is corrected whole
    corrected = np.where(fixed, right_truth, before.labels).astype(np.uint32)
    left_share = args.balance[1]
    second = continuation(ModelStore(models_dir).record(first.name), f"round-{stamp}-v2").replace(
        iterations=100_000, iteration_save=100_000, time_limit_min=args.continue_minutes,
        workers=os.cpu_count() or 1, touched_only=not args.trust_all, touched_margin=args.touched_margin,
        pair_weights=tuple(args.balance) if left_share else None)
    extra = [(image[left], truth[left])] if left_share else []
    t = time.perf_counter()
    run_to_end(train(second, image[right], corrected, extra_pairs=extra, auto_labels=before.labels,
                     models_dir=models_dir))
    phases["continue"] = time.perf_counter() - t
    t = time.perf_counter()
    after, _ = run_to_end(label_stack(second.name, image[right], models_dir=models_dir, settings=settings))
    phases["label_again"] = time.perf_counter() - t
    round_seconds = time.perf_counter() - round_start

    row = {"fixed_objects": len(ranked), "fixed_voxels_share": round(float(fixed.mean()), 4),
           "before": scores_outside(before.labels, right_truth, fixed),
           "after": scores_outside(after.labels, right_truth, fixed), "round_seconds": round(round_seconds),
           "phase_seconds": {k: round(v) for k, v in phases.items()}}
    lines += [json.dumps(row), f"load average after: {os.getloadavg()}"]
    print("\n".join(lines), flush=True)
    append("proofread_round", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
