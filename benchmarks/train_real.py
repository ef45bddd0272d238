"""Train on the real stacks for a fixed CPU budget and report what a biologist would get.

Instance 3D on the full chloroplast stack and semantic 2D on the sieve-plate image, each for ``--minutes``
(15 by default) of wall time on this machine, through the same ``train()`` generator the widget and the
command line use, with the defaults (data, mode, dims and the time: the plan chooses the rest) and, with
``--recipes defaults,hand``, the hand recipe this benchmark used before the plan, in the same run.
Prints, per task: the best validation score on the held-out block (matched-object F1 at IoU
0.5, or mean IoU), iterations per second, the share of each iteration spent waiting for data, and the training
FLOP rate as a share of this machine's matrix-multiply peak measured in the same run, in the job's number
format (bf16 where native, see hardware.py) and in fp32.

Run it alone: another busy process on a 2-core machine slows training several-fold. The load average is
printed beside the numbers for that reason.

    .venv/bin/python benchmarks/train_real.py [--minutes 15] [--task chloroplast3d|plate2d|all]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_plantbio_train.planning.window import network_for, window_for  # noqa: E402
from napari_plantbio_train.runtime.hardware import cpu_model, job_device  # noqa: E402
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Finished, Progress, Started, Validation
from napari_plantbio_train.runtime.hardware import Probe, choose_precision
from napari_plantbio_train.models.network import UNet
from napari_plantbio_train.models.losses import segmentation_loss
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.loop import train
from napari_plantbio_train.training.setup import plan_job

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The jobs as a user would fill in the form. Voxel size is not recorded for these stacks; the chloroplast
# stack is ten thin serial sections, so z is taken as ten times coarser than x/y.
JOBS = {
    "chloroplast3d": dict(mode="instance", dims="3d", voxel_size=(5.0, 5.0, 50.0), window=(4, 256, 256),
                          stem_stride=2, base_channels=16, depth=4, batch_size=2, lr=2e-3, validate_every=250,
                          val_fraction=0.2),
    "plate2d": dict(mode="semantic", dims="2d", voxel_size=(1.0, 1.0, 1.0), window=(256, 256),
                    stem_stride=2, base_channels=16, depth=4, batch_size=4, lr=2e-3, validate_every=100),
}


def matmul_peak(threads: int, size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a matrix multiply in the training's number format and thread count: the machine's practical
    peak for the job (bf16 runs on other units than fp32 where it is native, so each has its own peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_iteration(config: TrainConfig, image_shape: tuple[int, ...], out_channels: int) -> float:
    """Forward + backward FLOPs of one training iteration, counted by PyTorch on the job's own network."""
    model = UNet(in_channels=1, out_channels=out_channels, **network_for(config, image_shape))
    window = window_for(config, image_shape)
    x = torch.randn(config.batch_size * config.iteration_step, 1, *window)
    if config.mode == "instance":
        y = (torch.rand(x.shape[0], 2, *window) > 0.5).float()
    else:
        y = torch.randint(0, out_channels, (x.shape[0], *window))
    with FlopCounterMode(display=False) as counter:
        segmentation_loss(model(x), y, config.mode).backward()
    return float(counter.get_total_flops())


def run(task: str, recipe: str, minutes: float, models_dir: Path, overrides: dict) -> dict:
    image = tifffile.imread(DATA / task / "image.tif")
    labels = tifffile.imread(DATA / task / "labels.tif")
    job = {**(JOBS[task] if recipe == "hand" else {k: JOBS[task][k] for k in ("mode", "dims")}), **overrides}
    asked = TrainConfig(name=f"bench-{task}-{recipe}-{int(time.time())}", iterations=100_000,
                        iteration_save=100_000, time_limit_min=minutes, workers=os.cpu_count() or 1, **job)
    # The network the job will train, for its FLOPs: the plan train() makes from the same fields (its step times
    # are cached per machine, so the job's own planning below repeats the choice without timing again).
    config, _ = plan_job(asked, image, labels, store=ModelStore(models_dir), resume=False,
                         device=torch.device(job_device(asked)), threads=asked.workers)
    load_before = os.getloadavg()
    out_channels = 2 if config.mode == "instance" else len(np.unique(labels))
    network = {**network_for(config, image.shape), "in_channels": 1, "out_channels": out_channels}
    # The verdict train() will use (the same cached probe), so the peak is measured in the job's own format.
    precision = choose_precision(config.precision, torch.device(job_device(config)),
                                 Probe(network, window_for(config, image.shape), config.batch_size,
                                       config.mode)).precision
    peak = matmul_peak(config.workers, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    peak_fp32 = matmul_peak(config.workers) if precision == "bf16" else peak
    flops = flops_per_iteration(config, image.shape, out_channels)

    seconds = data_seconds = 0.0
    iterations = 0
    scores: list[tuple[int, float, dict]] = []
    started = time.perf_counter()
    for event in train(asked, image, labels, models_dir=models_dir):
        if isinstance(event, Started):
            region, plan = event.validation_region, list(event.plan)
            print(f"[{task}] window {event.window}, validation block z{region[0]} y{region[1]} x{region[2]}",
                  flush=True)
        elif isinstance(event, Progress):
            iterations += 1
            seconds += event.seconds_per_iteration
            data_seconds += event.data_seconds
        elif isinstance(event, Validation):
            scores.append((event.iteration, event.score, event.metrics))
            print(f"[{task}] {time.perf_counter() - started:6.0f}s it {event.iteration:5d} score "
                  f"{event.score:.4f} {json.dumps({k: round(v, 4) for k, v in event.metrics.items()})}",
                  flush=True)
        elif isinstance(event, Finished):
            finished = event
    wall = time.perf_counter() - started
    best = max(scores, key=lambda s: s[1]) if scores else (0, float("nan"), {})
    result = {
        "task": task, "recipe": recipe, "cpu": cpu_model(), "mode": config.mode, "dims": config.dims,
        "window": list(window_for(config, image.shape)), "plan": plan,
        "minutes": minutes, "wall_seconds": round(wall, 1), "iterations": finished.iteration,
        "best_score": round(best[1], 4), "best_iteration": best[0], "best_metrics": best[2],
        "final_score": round(scores[-1][1], 4) if scores else None,
        "iterations_per_second": round(iterations / seconds, 3),
        "windows_per_second": round(iterations * config.batch_size * config.iteration_step / seconds, 3),
        "data_wait_share": round(data_seconds / seconds, 4),
        "training_share_of_wall": round(seconds / wall, 4),
        "gflop_per_iteration": round(flops / 1e9, 2),
        "training_gflops": round(flops * iterations / seconds / 1e9, 1),
        "precision": precision,
        "matmul_peak_gflops": round(peak, 1),
        "share_of_peak": round(flops * iterations / seconds / 1e9 / peak, 3),
        "fp32_matmul_peak_gflops": round(peak_fp32, 1),
        "share_of_fp32_peak": round(flops * iterations / seconds / 1e9 / peak_fp32, 3),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--task", choices=[*JOBS, "all"], default="all")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--recipes", default="defaults",
                        help="defaults (data, mode, dims and the time only: the plan chooses), hand, or defaults,hand")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="override a job field, e.g. --set window=[8,384,384]")
    args = parser.parse_args()
    if not (DATA / "chloroplast3d" / "image.tif").exists():
        print(f"the real data is not at {DATA}", file=sys.stderr)
        return 1
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="plantbio-bench-"))
    tasks = list(JOBS) if args.task == "all" else [args.task]
    for task in tasks:
        for recipe in args.recipes.split(","):
            run(task, recipe, args.minutes, models_dir, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
