"""Windows per second of a data-parallel CPU job, from 1 to N processes, through the real command line.

Each run is `napari-plantbio-train train --cpu-processes N --events jsonl` on the same crop of the chloroplast
stack, with the machine's cores shared out among the processes (N processes x cores/N threads). Windows per
second count every rank's windows (batch x N per iteration) over the iterations after a warm-up, from the
seconds each iteration took on rank 0 (which waits for the slowest rank at every gradient exchange).

    .venv/bin/python benchmarks/cpu_processes_scaling.py [--processes 1 2] [--iterations 40] [--warmup 8]

Run it alone: the processes are meant to use every core. Results are appended to
benchmarks/results/cpu_processes_scaling.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chloroplast3d"
JOB = ["--mode", "instance", "--dims", "3d", "--voxel-size", "5", "5", "50", "--window", "4,128,128",
       "--stem-stride", "2", "--base-channels", "16", "--depth", "4", "--batch-size", "2", "--lr", "2e-3",
       "--validate-every", "100000", "--iteration-save", "100000"]


def run(processes: int, iterations: int, warmup: int, files: tuple[Path, Path], models: Path) -> dict:
    cores = len(os.sched_getaffinity(0))
    args = [sys.executable, "-m", "napari_plantbio_train.cli", "train", "--image", str(files[0]), "--labels",
            str(files[1]), "--name", f"scaling-{processes}", "--models-dir", str(models), "--iterations",
            str(iterations), "--workers", str(cores), "--cpu-processes", str(processes), "--events", "jsonl",
            "--quiet", *JOB]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed: {done.stderr.strip()[-500:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    steps = [r for r in records if r.get("event") == "progress"]
    timed = steps[warmup:]
    seconds = sum(s["seconds_per_iteration"] for s in timed)
    windows = len(timed) * 2 * processes
    return {"processes": processes, "threads_each": max(1, cores // processes), "iterations": len(timed),
            "windows_per_second": round(windows / seconds, 3),
            "data_wait_share": round(sum(s["data_seconds"] for s in timed) / seconds, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="plantbio-scaling-"))
    region = (slice(None), slice(1000, 1768), slice(600, 1368))
    files = (folder / "image.npy", folder / "labels.npy")
    np.save(files[0], tifffile.imread(DATA / "image.tif")[region])
    np.save(files[1], tifffile.imread(DATA / "labels.tif")[region])
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} cpu_processes_scaling {vars(args)}",
             f"load average before: {os.getloadavg()}"]
    rows = [run(n, args.iterations, args.warmup, files, folder / "models") for n in args.processes]
    base = rows[0]["windows_per_second"]
    for row in rows:
        row["speedup"] = round(row["windows_per_second"] / base, 3)
        lines.append(json.dumps(row))
    lines.append(f"load average after: {os.getloadavg()}")
    print("\n".join(lines), flush=True)
    append("cpu_processes_scaling", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
