"""Which of the proofreading queue's signs find the real errors, on tissue that does and does not drift.

Labels the right half of the chloroplast stack (x >= 1097) with a model trained on the left half (the first model
of proofread_round.py: ``--first-model`` reuses one, else one is trained for ``--train-minutes`` with the
defaults), as it is and with each ``--drift`` of _drift.py applied to the right half's right half (darker,
flatter, noisier tissue with its truth unchanged). For each, ranks the labelled objects by the product's queue
(inference/proofreading.py: doubt, appearance, size and shape, new tissue, combined as independent chances), by
each sign alone and by doubt with each other sign, and counts the real errors (predicted objects without a true
object at IoU >= 0.5) among the first 5, 10 and 20 entries; beside them, how many errors there are, how many of
them lie in the drifted columns and how many of each ranking's first 10 do.

    .venv/bin/python benchmarks/queue_precision.py --first-model /tmp/bench/first/first [--drift none darker]

Run it alone. Results are appended to benchmarks/results/queue_precision.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drift import KINDS, drifted  # noqa: E402
from _results import append  # noqa: E402
from proofread_round import SPLIT_X, real_errors, train_first  # noqa: E402
from train_real import DATA  # noqa: E402

from napari_plantbio_train.evaluation.evaluate import evaluate  # noqa: E402
from napari_plantbio_train.inference.label import LabelSettings, label_stack  # noqa: E402
from napari_plantbio_train.inference.proofreading import with_queue  # noqa: E402
from napari_plantbio_train.job.events import run_to_end  # noqa: E402
from napari_plantbio_train.runtime.hardware import cpu_model  # noqa: E402

SIGNS = ("doubt", "appearance", "shape", "novelty")
RANKINGS = {"product queue": SIGNS, "doubt alone": ("doubt",), "appearance alone": ("appearance",),
            "shape alone": ("shape",), "new tissue alone": ("novelty",), "doubt + shape": ("doubt", "shape"),
            "doubt + appearance": ("doubt", "appearance"), "doubt + new tissue": ("doubt", "novelty")}
FIRST = (5, 10, 20)


def ranking(queue: list, signs: tuple[str, ...]) -> list[int]:
    """Ids from the likeliest error down by ``signs`` combined as the queue combines them (ties by id)."""
    def score(entry) -> float:
        return 1.0 - math.prod(1.0 - getattr(entry, s) for s in signs)
    return [e.id for e in sorted(queue, key=lambda e: (-score(e), e.id))]


def columns_of(labels: np.ndarray) -> dict[int, float]:
    """Each object's mean column."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    x = np.broadcast_to(np.arange(labels.shape[-1]), labels.shape)
    sums = np.bincount(labels.ravel(), weights=x.ravel().astype(np.float64), minlength=int(labels.max()) + 1)
    counts = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    return {int(i): float(sums[i] / counts[i]) for i in ids}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-model", type=Path, metavar="FOLDER",
                        help="a model trained on the left half (proofread_round.py's first model): reuse it")
    parser.add_argument("--train-minutes", type=float, default=10.0, help="without --first-model")
    parser.add_argument("--drift", nargs="+", choices=KINDS, default=list(KINDS))
    args = parser.parse_args()
    image = tifffile.imread(DATA / "chloroplast3d" / "image.tif")
    truth_all = tifffile.imread(DATA / "chloroplast3d" / "labels.tif")
    header = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} queue_precision "
              f"{' '.join(sys.argv[1:]) or '(defaults)'} on {cpu_model()}",
              f"load average before: {os.getloadavg()}"]
    print("\n".join(header), flush=True)
    if args.first_model:
        models_dir, base = args.first_model.parent, args.first_model.name
    else:
        models_dir, base = Path(tempfile.mkdtemp(prefix="plantbio-queue-")), f"queue-{int(time.time())}"
        left = (slice(None), slice(None), slice(0, SPLIT_X))
        train_first(base, np.ascontiguousarray(image[left]), np.ascontiguousarray(truth_all[left]),
                    args.train_minutes, "defaults", models_dir)
    right = (slice(None), slice(None), slice(SPLIT_X, None))
    plain, truth = np.ascontiguousarray(image[right]), np.ascontiguousarray(truth_all[right])
    start = plain.shape[-1] // 2  # the drifted columns of the right half: its right half
    lines = list(header)
    for kind in args.drift:
        stack = drifted(plain, kind, start)
        t = time.perf_counter()
        result, _ = run_to_end(label_stack(base, stack, models_dir=models_dir, uncertainty=True,
                                           settings=LabelSettings()))
        result = with_queue(result, stack)
        seconds = time.perf_counter() - t
        labels = np.asarray(result.labels).astype(np.uint32)
        queue = list(result.queue or ())
        errors = real_errors(labels, truth)
        column = columns_of(labels)
        in_drift = {i for i, x in column.items() if x >= start}
        after = (slice(None), slice(None), slice(start, None))
        row = {"drift": kind, "model": base, "seconds": round(seconds, 1), "objects": len(queue),
               "errors": len(errors), "objects_in_drift": len(in_drift), "errors_in_drift": len(errors & in_drift),
               "f1_50": round(float(evaluate(labels, truth, "instance")["f1_50"]), 4),
               "f1_50_drifted_columns": round(float(evaluate(labels[after], truth[after], "instance")["f1_50"]), 4),
               "errors_among_first": {}, "drifted_among_first_10": {}}
        for name, signs in RANKINGS.items():
            ids = ranking(queue, signs)
            row["errors_among_first"][name] = [sum(i in errors for i in ids[:n]) for n in FIRST]
            row["drifted_among_first_10"][name] = sum(i in in_drift for i in ids[:10])
        lines.append(json.dumps(row))
        print(lines[-1], flush=True)
    lines.append(f"load average after: {os.getloadavg()}")
    print(lines[-1], flush=True)
    append("queue_precision", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
