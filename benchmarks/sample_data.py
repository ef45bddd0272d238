"""Does a model trained on the built-in sample for two minutes visibly work?

Trains on the synthetic stack of File > Open Sample (seed 0) for ``--minutes`` of wall time, as a new user would
from the dock, then auto-labels a second synthetic stack made with another seed (other organelles, never
seen) and scores it: matched-object F1 for the instance job, IoU per class for the semantic one.

    .venv/bin/python benchmarks/sample_data.py [--minutes 2]

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
from napari_plantbio_train.job.events import Finished
from napari_plantbio_train.inference.label import label_stack, run_to_end
from napari_plantbio_train.io.synthetic import make_stack
from napari_plantbio_train.training.loop import train

JOBS = {
    "instance": dict(mode="instance", dims="3d", window=(4, 128, 128), stem_stride=2, batch_size=2, lr=2e-3,
                     validate_every=100, base_channels=16, depth=3),
    "semantic": dict(mode="semantic", dims="3d", window=(4, 128, 128), stem_stride=2, batch_size=2, lr=2e-3,
                     validate_every=100, base_channels=16, depth=3),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args()
    seen, unseen = make_stack(seed=0), make_stack(seed=1)
    models_dir = Path(tempfile.mkdtemp(prefix="plantbio-sample-"))
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} sample_data --minutes {args.minutes}",
             f"load average before: {os.getloadavg()}"]
    for kind, job in JOBS.items():
        labels = seen.instances if kind == "instance" else seen.semantic
        truth = unseen.instances if kind == "instance" else unseen.semantic
        x, y, z = seen.voxel_size
        config = TrainConfig(name=f"sample-{kind}", voxel_size=(x, y, z), iterations=100_000,
                             iteration_save=100_000, time_limit_min=args.minutes, workers=os.cpu_count() or 1,
                             **job)
        start = time.perf_counter()
        finished = [e for e in train(config, seen.image, labels, models_dir=models_dir) if isinstance(e, Finished)][0]
        seconds = time.perf_counter() - start
        result, _ = run_to_end(label_stack(config.name, unseen.image, models_dir=models_dir))
        scores = evaluate(result.labels, truth, kind)
        keep = (["f1_50", "ap_50", "f1_75", "n_pred", "n_true", "foreground_iou"] if kind == "instance"
                else ["mean_iou", "iou_1", "iou_2", "pixel_accuracy"])
        row = {"job": kind, "train_seconds": round(seconds), "iterations": finished.iteration,
               "best_validation": finished.best_score, "unseen_stack": {k: round(float(scores[k]), 4) for k in keep}}
        lines.append(json.dumps(row))
        print(lines[-1], flush=True)
    lines.append(f"load average after: {os.getloadavg()}")
    append("sample_data", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
