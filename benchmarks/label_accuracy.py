"""Train on one part of a real stack, auto-label the other part, and score the labels against the truth.

The labelled part was never seen in training, not even as the validation block, so the scores are what a
biologist would get on a new region of the same kind of tissue. Training uses the jobs of ``train_real.py``
with a wall-clock budget; labelling goes through ``label_stack`` exactly as the widget and the command line
run it, once at the default precision and once in fp32, so the cost of bf16 (where it is used) is measured too.

    .venv/bin/python benchmarks/label_accuracy.py [--task chloroplast3d|plate2d|all] [--minutes 8]

Chloroplast: trained on x < 1600, labelled x >= 1600 (595 columns, about 25% of the stack).
Plate: trained on rows y < 700, labelled y >= 700 (243 rows).
Run it alone (see train_real.py). Results are appended to benchmarks/results/label_accuracy.txt.
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

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402
from train_real import DATA, JOBS  # noqa: E402

from napari_plantbio_train.job.config import TrainConfig  # noqa: E402
from napari_plantbio_train.evaluation.evaluate import evaluate  # noqa: E402
from napari_plantbio_train.job.events import Finished, Validation  # noqa: E402
from napari_plantbio_train.inference.label import LabelSettings, label_stack, run_to_end  # noqa: E402
from napari_plantbio_train.training.loop import train  # noqa: E402

SPLITS = {  # (training part, labelled part) as numpy index expressions on (Z, Y, X) / (Y, X)
    "chloroplast3d": ((slice(None), slice(None), slice(0, 1600)), (slice(None), slice(None), slice(1600, None))),
    "plate2d": ((slice(0, 700), slice(None)), (slice(700, None), slice(None))),
}


def run(task: str, minutes: float, models_dir: Path) -> dict:
    image = tifffile.imread(DATA / task / "image.tif")
    truth = tifffile.imread(DATA / task / "labels.tif")
    train_part, test_part = SPLITS[task]
    config = TrainConfig(name=f"accuracy-{task}-{int(time.time())}", iterations=100_000, iteration_save=100_000,
                         time_limit_min=minutes, workers=os.cpu_count() or 1, **JOBS[task])
    load_before = os.getloadavg()
    started = time.perf_counter()
    best = None
    for event in train(config, image[train_part], truth[train_part], models_dir=models_dir):
        if isinstance(event, Validation):
            print(f"[{task}] {time.perf_counter() - started:5.0f}s it {event.iteration} validation "
                  f"{event.score:.4f}", flush=True)
        elif isinstance(event, Finished):
            best = event.best_score
            iterations = event.iteration
    train_seconds = time.perf_counter() - started

    test_image, test_truth = image[test_part], truth[test_part]
    mode = config.mode
    result = {"task": task, "model": config.name, "models_dir": str(models_dir), "train_minutes": minutes,
              "train_seconds": round(train_seconds), "iterations": iterations,
              "best_validation": None if best is None else round(best, 4),
              "labelled_shape": list(test_image.shape), "load_before": [round(v, 2) for v in load_before]}
    for precision in ("auto", "fp32"):
        settings = LabelSettings(precision=precision)
        start = time.perf_counter()
        labelled, events = run_to_end(label_stack(config.name, test_image, models_dir=models_dir, settings=settings))
        seconds = time.perf_counter() - start
        scores = evaluate(labelled.labels, test_truth, mode, per_slice=False)
        keys = (["f1_50", "precision_50", "recall_50", "ap_50", "f1_75", "ap_75", "mean_matched_iou_50", "n_pred",
                 "n_true", "count_difference", "foreground_iou"] if mode == "instance"
                else [k for k in scores if k.startswith(("mean_", "iou_", "dice_", "pixel"))])
        result[f"label_{events[0].precision}"] = {"seconds": round(seconds, 1),
                                                  **{k: round(float(scores[k]), 4) for k in keys}}
        print(f"[{task}] labelled {test_image.shape} at {events[0].precision} in {seconds:.1f} s: "
              f"{json.dumps(result[f'label_{events[0].precision}'])}", flush=True)
        if events[0].precision == "fp32":
            break  # auto resolved to fp32 already: one run covers both
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*SPLITS, "all"], default="all")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per task (wall clock)")
    parser.add_argument("--models-dir", type=Path, help="keep the trained models here (default: a temp folder)")
    args = parser.parse_args()
    if not (DATA / "chloroplast3d" / "image.tif").exists():
        print(f"the real data is not at {DATA}", file=sys.stderr)
        return 1
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="plantbio-accuracy-"))
    tasks = list(SPLITS) if args.task == "all" else [args.task]
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} label_accuracy "
             f"{' '.join(sys.argv[1:]) or '(defaults)'}"]
    for task in tasks:
        lines.append(json.dumps(run(task, args.minutes, models_dir)))
        print(lines[-1], flush=True)
    append("label_accuracy", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
