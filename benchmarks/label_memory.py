"""Peak memory of auto-labelling a stack held as zarr, against the size of the stack.

Each case runs in a fresh child process that opens the input zarr lazily and writes the labels to a zarr
store, so neither the stack nor the result is ever in memory as a whole; the peak resident memory of the child
(``ru_maxrss``) minus its resident memory just before labelling (Python, torch and the model loaded) is what
labelling itself costs. Cases: the chloroplast stack, the same stack tiled twice along y (twice the voxels),
and the stack again with blocks half as large. If memory followed the stack, the second case would need
twice the first.

    .venv/bin/python benchmarks/label_memory.py --model NAME --models-dir DIR   # e.g. from label_accuracy.py
    .venv/bin/python benchmarks/label_memory.py                                # trains a model for 2 minutes

Run it alone. Results are appended to benchmarks/results/label_memory.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> int:
    import zarr

    from napari_plantbio_train.inference.label import LabelSettings, _predictor, _make_job, label_stack, run_to_end
    from napari_plantbio_train.models.store import ModelStore

    image = zarr.open_array(store=args.input, mode="r")
    settings = LabelSettings(block_voxels=args.block_voxels)
    store = ModelStore(args.models_dir)
    # Load the model before measuring the baseline: its weights are not what this benchmark is about.
    _predictor(_make_job(store.record(args.model), store, settings, tuple(image.shape), image))
    baseline = rss_mb()
    start = time.perf_counter()
    result, events = run_to_end(label_stack(args.model, image, models_dir=args.models_dir, output=args.output,
                                            settings=settings))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"shape": list(image.shape), "stack_mb": round(image.nbytes / 2**20, 1),
                      "block_voxels": args.block_voxels, "blocks": events[0].blocks, "objects": result.objects,
                      "seconds": round(seconds, 1), "baseline_mb": round(baseline), "peak_mb": round(peak),
                      "labelling_mb": round(peak - baseline)}))
    return 0


def make_inputs(folder: Path) -> dict[str, Path]:
    import tifffile
    import zarr

    image = tifffile.imread(HERE.parents[1] / "shared" / "data" / "chloroplast3d" / "image.tif")
    paths = {}
    for name, data in (("1x", image), ("2x", np.concatenate([image, image[:, ::-1]], axis=1))):
        path = folder / f"chloroplast-{name}.zarr"
        array = zarr.open_array(store=str(path), mode="w", shape=data.shape, chunks=(1, 512, 512), dtype=data.dtype)
        array[:] = data
        paths[name] = path
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--models-dir")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--block-voxels", type=int, default=32 * 2**20)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from napari_plantbio_train.inference.label import LabelSettings

    work = Path(tempfile.mkdtemp(prefix="plantbio-memory-"))
    if args.model is None:
        subprocess.run([sys.executable, str(HERE / "label_accuracy.py"), "--task", "chloroplast3d", "--minutes", "2",
                        "--models-dir", str(work / "models")], check=True)
        args.models_dir = str(work / "models")
        args.model = next(p.name for p in (work / "models").iterdir())
    inputs = make_inputs(work)
    default = LabelSettings.block_voxels
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} label_memory model {args.model}",
             f"load average before: {os.getloadavg()}"]
    print("\n".join(lines), flush=True)
    for name, blocks in (("1x", default), ("2x", default), ("1x", default // 2)):
        output = work / f"labels-{name}-{blocks}.zarr"
        done = subprocess.run([sys.executable, __file__, "--child", "--input", str(inputs[name]), "--output",
                               str(output), "--model", args.model, "--models-dir", args.models_dir,
                               "--block-voxels", str(blocks)], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["case"] = name
        lines.append(json.dumps(row))
        print(lines[-1], flush=True)
    lines.append(f"load average after: {os.getloadavg()}")
    print(lines[-1])
    append("label_memory", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
