"""Does a model trained on the built-in sample for two minutes visibly work?

Trains on the synthetic stack of File > Open Sample (seed 0) for ``--minutes`` of wall time, as a new user would
from the dock, then auto-labels a second synthetic stack made with another seed (other organelles, never
seen) and scores it: matched-object F1 for the instance job, IoU per class for the semantic one.

``defaults`` is what the user gets: mode, dims, the layer's voxel size and the time limit, the rest the plan's.
``hand`` is the recipe this script hard-coded before the planner, printed beside it in the same run.

    .venv/bin/python benchmarks/sample_data.py [--minutes 2] [--recipes defaults,hand]

Run it alone. Results are appended to benchmarks/results/sample_data.txt.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402

from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.evaluation.evaluate import evaluate
from napari_plantbio_train.job.events import Finished, Started
from napari_plantbio_train.runtime.hardware import cpu_model
from napari_plantbio_train.inference.label import label_stack, run_to_end
from napari_plantbio_train.io.synthetic import make_stack
from napari_plantbio_train.training.loop import train

HAND = dict(window=(4, 128, 128), stem_stride=2, batch_size=2, lr=2e-3, validate_every=100, base_channels=16,
            depth=3)
RECIPES = {"defaults": {}, "hand": HAND}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--recipes", default="defaults,hand", help="comma-separated: " + ", ".join(RECIPES))
    args = parser.parse_args()
    recipes = [r for r in args.recipes.split(",") if r]
    seen, unseen = make_stack(seed=0), make_stack(seed=1)
    models_dir = Path(tempfile.mkdtemp(prefix="plantbio-sample-"))
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} sample_data --minutes {args.minutes}",
             f"cpu: {cpu_model()}", f"load average before: {os.getloadavg()}"]
    for kind, recipe in ((k, r) for k in ("instance", "semantic") for r in recipes):
        labels = seen.instances if kind == "instance" else seen.semantic
        truth = unseen.instances if kind == "instance" else unseen.semantic
        x, y, z = seen.voxel_size
        config = TrainConfig(name=f"sample-{kind}-{recipe}", mode=kind, dims="3d", voxel_size=(x, y, z),
                             iterations=100_000, iteration_save=100_000, time_limit_min=args.minutes,
                             workers=os.cpu_count() or 1, **RECIPES[recipe])
        start = time.perf_counter()
        events = list(train(config, seen.image, labels, models_dir=models_dir))
        finished = [e for e in events if isinstance(e, Finished)][0]
        started = [e for e in events if isinstance(e, Started)][0]
        seconds = time.perf_counter() - start
        result, _ = run_to_end(label_stack(config.name, unseen.image, models_dir=models_dir))
        scores = evaluate(result.labels, truth, kind)
        keep = (["f1_50", "ap_50", "f1_75", "n_pred", "n_true", "foreground_iou"] if kind == "instance"
                else ["mean_iou", "iou_1", "iou_2", "pixel_accuracy"])
        row = {"job": kind, "recipe": recipe, "window": list(started.window), "plan": list(started.plan),
               "train_seconds": round(seconds), "iterations": finished.iteration,
               "best_validation": finished.best_score, "unseen_stack": {k: round(float(scores[k]), 4) for k in keep}}
        lines.append(json.dumps(row))
        print(lines[-1], flush=True)
    lines.append(f"load average after: {os.getloadavg()}")
    append("sample_data", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
