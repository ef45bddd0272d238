"""Checks that need a CUDA GPU (run by benchmarks/gpu_session.sh on a lent machine; CI has none).

1. A short chloroplast job with window-drawing worker processes: the batch-size hint, iterations per second,
   and the share of each iteration spent waiting for data.
2. Out of memory: the same model resumed with a batch and window far beyond the card. The job must end with a
   batch_size error naming what fits, within a bounded time, and the checkpoint written before must load.

    python benchmarks/cuda_checks.py [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.job.events import Progress, Started, run_to_end
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.loop import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check")
        return 0
    print(f"card: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    folder = Path(args.data) / "chloroplast3d"
    image, labels = tifffile.imread(folder / "image.tif"), tifffile.imread(folder / "labels.tif")
    models = Path(tempfile.mkdtemp(prefix="cuda-checks-"))
    config = TrainConfig(name="cuda", mode="instance", dims="3d", voxel_size=(5, 5, 50), window=(8, 256, 256),
                         stem_stride=2, batch_size=8, iterations=args.iterations, iteration_save=20,
                         validate_every=10**9, data_workers=4, workers=8)
    _, events = run_to_end(train(config, image, labels, models_dir=models))
    started = next(e for e in events if isinstance(e, Started))
    steps = [e for e in events if isinstance(e, Progress)][10:]
    seconds = sum(e.seconds_per_iteration for e in steps)
    print(f"job: precision {started.precision}, batch hint {started.batch_hint} (batch {config.batch_size}), "
          f"{len(steps) / seconds:.1f} it/s = {len(steps) * config.batch_size / seconds:.0f} windows/s after "
          f"warm-up, data wait {100 * sum(e.data_seconds for e in steps) / seconds:.1f}%")

    huge = config.replace(batch_size=512, window=(8, 512, 512), iterations=args.iterations + 10)
    began = time.perf_counter()
    try:
        run_to_end(train(huge, image, labels, models_dir=models, resume=True))
        print("FAIL: a batch of 512 windows of 8x512x512 trained without running out of memory")
        return 1
    except ConfigError as error:
        print(f"out of memory after {time.perf_counter() - began:.1f} s -> {error}")
        if error.field != "batch_size":
            print("FAIL: the error does not name batch_size")
            return 1
    record = ModelStore(models).record("cuda")
    state = ModelStore(models).load_checkpoint(record, "last")
    ok = int(state["iteration"]) == args.iterations and all(torch.isfinite(v).all() for v in state["model"].values()
                                                            if v.is_floating_point())
    print(f"last checkpoint after the failure: iteration {state['iteration']}, loads {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
