"""Windows per second of our whole training step against a MONAI pipeline training the same network.

Ours is the real ``train()`` generator the dock and the command line run (window sampling, augmentation,
forward, backward, clipping, AdamW), timed from its own ``Progress`` events after ``--warmup`` iterations;
validation and checkpoints are pushed out of reach and the generator is closed after the last timed iteration.

MONAI's peer is a typical MONAI training script on the same material: our ``prepare()`` output (the normalised
training region and its targets, so both learn the same thing from the same pixels), cached once by a
``CacheDataset`` (with ``FgBgToIndicesd`` in the cached part, as MONAI advises, and ``copy_cache=False``: the
random transforms do not modify the cache), then ``RandCropByPosNegLabeld`` (pos = neg = 1, our half of windows
aimed at objects), a ``RandFlipd`` per spatial axis, ``RandRotate90d`` in-plane, ``RandScaleIntensityd``,
``RandShiftIntensityd`` and ``RandGaussianNoised`` with our probabilities and ranges, MONAI's ``DataLoader``
with ``--workers`` processes, and our ``UNet`` built from the same constructor arguments and seed. Its loss is
MONAI's ``DiceCELoss`` (semantic) or ``DiceLoss`` + BCE (instance), batch Dice like ours, with the same AdamW
settings and the same gradient clipping. One dataset item yields the batch through ``num_samples`` (MONAI's
own way to draw several windows of one volume); a sampler with replacement makes one long epoch, so worker
processes start once, as they would in a real run over many volumes.

Precision pairings, all in one run: ours ``fp32`` against MONAI fp32; ours ``auto`` (bf16 autocast where the
hardware runs it natively: CUDA GPUs, CPUs with AVX512-BF16) against MONAI under the same bf16 autocast (loss
in fp32 in both, as ours computes it), and against MONAI fp32, what a MONAI script gets unless its author adds
autocast. Where ``auto`` resolves to fp32 the bf16 runs are skipped.

Data-wait share: ours is the sum of ``Progress.data_seconds`` over the sum of ``seconds_per_iteration``;
MONAI's is the time blocked on the loader (and the copy to the device) over the step time. With worker
processes the loader prefetches during warm-up, which flatters MONAI slightly on short runs: use enough steps.

Run it alone (the load average is printed before and after for that reason). Results are appended to
``benchmarks/results/train_throughput.txt`` (not with ``--quick``); the last line on stdout is a JSON summary.

    .venv/bin/python benchmarks/train_throughput.py                         # CPU: 2D and 3D, MONAI workers 0 and 2
    .venv/bin/python benchmarks/train_throughput.py --quick                 # a smoke test of every path
    python benchmarks/train_throughput.py --device cuda --data /path/to/data   # a GPU machine, MONAI workers 8

It needs torch, numpy, scipy, scikit-image, tifffile and monai, not napari: on a bare checkout the package is
imported from ``src/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import append  # noqa: E402

try:
    import napari_plantbio_train  # noqa: F401
except ModuleNotFoundError:  # a bare checkout (the GPU machine): no editable install, import from the tree
    sys.path.insert(0, str(HERE.parent / "src"))

from napari_plantbio_train.planning.window import network_for  # noqa: E402
from napari_plantbio_train.job.config import TrainConfig  # noqa: E402
from napari_plantbio_train.training.sampling import crop  # noqa: E402
from napari_plantbio_train.job.events import Progress, Started  # noqa: E402
from napari_plantbio_train.runtime.hardware import Machine, candidates, native_cpu_bf16  # noqa: E402
from napari_plantbio_train.models.network import UNet  # noqa: E402
from napari_plantbio_train.training.material import Material, prepare  # noqa: E402
from napari_plantbio_train.training.loop import train  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"

# The networks of train_real.py's two jobs (stem stride 2, 16 base channels, depth 4), with a 3D window of 8
# slices (the default z of a 10-slice stack) and 128 x 128 in-plane. The chloroplast stack is cropped (top-left
# corner, about 9% objects like the whole stack) so that caching and index lists stay small for both pipelines.
JOBS: dict[str, dict[str, Any]] = {
    "2d": dict(folder="plate2d", crop=None,
               config=dict(mode="semantic", dims="2d", voxel_size=(1.0, 1.0, 1.0), window=(256, 256),
                           stem_stride=2, base_channels=16, depth=4, batch_size=4, lr=2e-3)),
    "3d": dict(folder="chloroplast3d", crop=(10, 1024, 1024),
               config=dict(mode="instance", dims="3d", voxel_size=(5.0, 5.0, 50.0), window=(8, 128, 128),
                           stem_stride=2, base_channels=16, depth=4, batch_size=2, lr=2e-3)),
}
QUICK = {"2d": dict(window=(64, 64), batch_size=2, crop=None),
         "3d": dict(window=(4, 64, 64), batch_size=2, crop=(10, 256, 256))}
NEVER = 10**9  # iterations, validation and checkpoint periods that the timed run never reaches


def usable_cores() -> int:
    """The cores this process may run on: a container on a large host can see every host core in cpu_count."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class Row:
    """One timed run: what the table prints and the JSON summary carries."""

    dims: str
    pipeline: str  # "ours" or "monai"
    precision: str  # "fp32" or "bf16"
    asked: str  # what was asked: ours "fp32"/"auto", MONAI "fp32"/"bf16 autocast"
    workers: int | None  # MONAI's loader processes; None for ours
    steps: int
    windows: int
    seconds: float  # wall time of the timed steps, device synchronised at both ends
    step_seconds: list[float] = field(default_factory=list)
    data_seconds: float = 0.0
    loss: float = float("nan")  # of the last step, to show both pipelines really train

    @property
    def windows_per_second(self) -> float:
        return self.windows / self.seconds

    @property
    def data_share(self) -> float:
        return self.data_seconds / max(sum(self.step_seconds), 1e-12)

    @property
    def label(self) -> str:
        return "ours" if self.pipeline == "ours" else f"MONAI w{self.workers}"

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "step_seconds"}
        out.update(windows_per_second=round(self.windows_per_second, 3), data_wait_share=round(self.data_share, 4),
                   median_step_seconds=round(statistics.median(self.step_seconds), 4),
                   seconds=round(self.seconds, 3), data_seconds=round(self.data_seconds, 3),
                   loss=round(self.loss, 4))
        return out


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The card (or CPU) that gave the numbers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    return f"{model}, {usable_cores()} cores, native bf16 {'yes' if native_cpu_bf16() else 'no'}"


def load_task(dims: str, data: Path, crop_shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    folder = data / JOBS[dims]["folder"]
    image, labels = tifffile.imread(folder / "image.tif"), tifffile.imread(folder / "labels.tif")
    if crop_shape is not None:
        region = tuple(slice(0, c) for c in crop_shape)
        image, labels = image[region], labels[region]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def job_config(dims: str, args: argparse.Namespace, precision: str, device: torch.device) -> TrainConfig:
    """The job both pipelines run: ours trains it, MONAI takes its network, window, batch and learning rate."""
    fields = dict(JOBS[dims]["config"])
    if args.quick:
        fields.update({k: v for k, v in QUICK[dims].items() if k != "crop"})
    if args.batch_size:
        fields["batch_size"] = args.batch_size
    fields.update(args.overrides)
    config = TrainConfig(name=f"bench-throughput-{dims}-{precision}", iterations=NEVER, validate_every=NEVER,
                         iteration_save=NEVER, time_limit_min=None, workers=args.threads,
                         gpus=1 if device.type == "cuda" else 0, precision=precision, seed=args.seed, **fields)
    if config.iteration_step != 1:
        raise SystemExit("iteration_step must be 1: the MONAI peer takes one optimiser step per batch")
    return config


# ----- ours ---------------------------------------------------------------------------------------------------
def run_ours(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *, warmup: int, steps: int,
             device: torch.device) -> Row:
    """Drive the real training generator; time iterations warmup+1 .. warmup+steps from outside as well."""
    benchmark_flag = torch.backends.cudnn.benchmark
    timed: list[Progress] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plantbio-throughput-") as models_dir:
        events = train(config, image, labels, models_dir=models_dir)
        try:
            for event in events:
                if isinstance(event, Started):
                    precision = event.precision  # this machine's verdict for "auto" (see hardware.py)
                if not isinstance(event, Progress):
                    continue
                if event.iteration == warmup:
                    synchronise(device)
                    t0 = time.perf_counter()
                    print(f"    warm-up done after {t0 - started:.1f} s (preparation included)", flush=True)
                elif event.iteration > warmup:
                    timed.append(event)
                    if len(timed) == steps:
                        synchronise(device)
                        t1 = time.perf_counter()
                        break
        finally:
            events.close()  # skips the final validation and checkpoint, which are not part of a step
    # Our loop may tune global switches for itself; MONAI's runs get torch's defaults back.
    torch.backends.cudnn.benchmark = benchmark_flag
    windows = steps * config.batch_size * config.iteration_step
    return Row(config.dims, "ours", precision, config.precision, None, steps, windows, t1 - t0,
               [e.seconds_per_iteration for e in timed], sum(e.data_seconds for e in timed), timed[-1].loss)


# ----- MONAI --------------------------------------------------------------------------------------------------
def monai_arrays(material: Material, spatial_dims: int, mode: str) -> dict[str, np.ndarray]:
    """The training region as MONAI wants it, channel first: the same normalised pixels and targets ours uses."""
    image = material.normalisation.apply(crop(material.stack, material.train_region))  # (Z, Y, X)
    label = crop(material.target, material.train_region)  # (Z, Y, X) classes or (2, Z, Y, X) maps
    if spatial_dims == 2:
        if image.shape[0] != 1:
            raise SystemExit("the 2D comparison wants a single 2D image (its slices would be separate items)")
        return {"image": image, "label": label if mode == "semantic" else label[:, 0]}
    return {"image": image[np.newaxis], "label": label[np.newaxis] if mode == "semantic" else label}


def monai_transforms(spatial_dims: int, window: tuple[int, ...], batch: int) -> Any:
    """Deterministic part (cached once), then our augmentations with our probabilities and ranges."""
    from monai import transforms as T

    keys = ["image", "label"]
    inplane = (spatial_dims - 2, spatial_dims - 1)  # spatial axes after the channel
    rotate = []
    if window[-1] == window[-2]:  # like ours: quarter turns only keep a square window's shape
        rotate = [T.RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=inplane)]  # k uniform in 0..3
    return T.Compose([
        T.EnsureTyped(keys, dtype=torch.float32),
        T.FgBgToIndicesd("label"),  # MONAI's advice: index the objects once rather than every draw
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=window, pos=1, neg=1, num_samples=batch,
                                 fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices"),
        *[T.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)],
        *rotate,
        T.RandScaleIntensityd("image", factors=0.15, prob=1.0),  # x (1 + U(-0.15, 0.15)), ours x U(0.85, 1.15)
        T.RandShiftIntensityd("image", offsets=0.1, prob=1.0),
        T.RandGaussianNoised("image", prob=0.3, mean=0.0, std=0.03, sample_std=False),
    ])


def monai_loss(mode: str) -> Any:
    from monai.losses import DiceCELoss, DiceLoss

    if mode == "semantic":
        return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    dice, bce = DiceLoss(sigmoid=True, batch=True), torch.nn.BCEWithLogitsLoss()
    return lambda logits, target: dice(logits, target) + bce(logits, target)


def run_monai(config: TrainConfig, material: Material, out_channels: int, image_shape: tuple[int, ...], *,
              workers: int, precision: str, warmup: int, steps: int, device: torch.device, threads: int) -> Row:
    from monai.data import CacheDataset, DataLoader

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    window = tuple(material.window)
    transforms = monai_transforms(config.spatial_dims, window, config.batch_size)
    transforms.set_random_state(seed=config.seed)  # worker processes reseed it each from their own seed
    dataset = CacheDataset([monai_arrays(material, config.spatial_dims, config.mode)], transforms,
                           copy_cache=False, progress=False)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=warmup + steps)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model = UNet(in_channels=1, out_channels=out_channels, **network_for(config, image_shape)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    loss_function = monai_loss(config.mode)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    model.train()
    batches = iter(loader)
    step_seconds: list[float] = []
    data_seconds, loss_value, t0 = 0.0, float("nan"), 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronise(device)
            t0 = time.perf_counter()
            step_seconds, data_seconds = [], 0.0
        tick = time.perf_counter()
        batch = next(batches)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        data_seconds += time.perf_counter() - tick
        with autocast:
            logits = model(x)
        loss = loss_function(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        step_seconds.append(time.perf_counter() - tick)
    synchronise(device)
    seconds = time.perf_counter() - t0
    del batches, loader
    if x.shape[0] != config.batch_size or tuple(x.shape[2:]) != window:
        raise RuntimeError(f"MONAI's batch {tuple(x.shape)} is not {config.batch_size} windows of {window}")
    asked = "bf16 autocast" if precision == "bf16" else "fp32"
    return Row(config.dims, "monai", precision, asked, workers, steps, steps * config.batch_size, seconds,
               step_seconds, data_seconds, loss_value)


# ----- one dimensionality -------------------------------------------------------------------------------------
def run_dims(dims: str, args: argparse.Namespace, device: torch.device, say) -> list[Row]:
    crop_shape = QUICK[dims]["crop"] if args.quick else JOBS[dims]["crop"]
    image, labels = load_task(dims, args.data, crop_shape)
    precisions = ["fp32"]
    if candidates(device, Machine.here(device))[0].precision == "bf16":
        precisions.append("auto")
    else:
        say(f"[{dims}] precision auto resolves to fp32 on {device.type}: the bf16 pairings are skipped")
    # The material ours prepares inside train() (the same function, so the same pixels, targets and region).
    config = job_config(dims, args, "fp32", device)
    material = prepare(config, image, labels, previous=None)
    out_channels = 2 if config.mode == "instance" else len(material.classes)
    say(f"[{dims}] {JOBS[dims]['folder']} {tuple(image.shape)}, {config.mode}, window {material.window}, "
        f"batch {config.batch_size}, training region z{material.train_region[0]} y{material.train_region[1]} "
        f"x{material.train_region[2]}, network {json.dumps(network_for(config, image.shape))}, "
        f"{out_channels} outputs")
    rows: list[Row] = []
    for precision in precisions:
        config = job_config(dims, args, precision, device)
        say(f"[{dims}] ours, precision {precision} ...")
        rows.append(run_ours(config, image, labels, warmup=args.warmup, steps=args.steps, device=device))
        say(row_line(rows[-1]))
        monai_precision = rows[-1].precision  # what ours ran in: "auto" as this machine's verdict has it
        for workers in args.workers:
            say(f"[{dims}] MONAI, {monai_precision}, {workers} loader workers ...")
            rows.append(run_monai(config, material, out_channels, image.shape, workers=workers,
                                  precision=monai_precision, warmup=args.warmup, steps=args.steps, device=device,
                                  threads=args.threads))
            say(row_line(rows[-1]))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----- report -------------------------------------------------------------------------------------------------
def row_line(row: Row) -> str:
    return (f"    {row.label:9s} {row.asked:13s} -> {row.precision}: {row.windows_per_second:8.2f} windows/s, "
            f"data wait {row.data_share:6.1%}, median step {statistics.median(row.step_seconds):.4f} s, "
            f"last loss {row.loss:.4f}")


def ours_for(rows: list[Row], row: Row) -> Row | None:
    """Our run at the MONAI row's precision (fp32 with fp32, auto with bf16 autocast)."""
    return next((r for r in rows if r.pipeline == "ours" and r.dims == row.dims and r.precision == row.precision),
                None)


def table(rows: list[Row]) -> list[str]:
    lines = [f"{'dims':4s}  {'pipeline':9s}  {'precision':22s}  {'windows/s':>9s}  {'data wait':>9s}  "
             f"{'step s (med)':>12s}  {'ours/MONAI':>10s}"]
    for row in rows:
        ours = ours_for(rows, row) if row.pipeline == "monai" else None
        ratio = f"{ours.windows_per_second / row.windows_per_second:10.2f}" if ours else f"{'':10s}"
        lines.append(f"{row.dims:4s}  {row.label:9s}  {row.asked + ' -> ' + row.precision:22s}  "
                     f"{row.windows_per_second:9.2f}  {row.data_share:9.1%}  "
                     f"{statistics.median(row.step_seconds):12.4f}  {ratio}")
    return lines


def pairings(rows: list[Row]) -> dict[str, float]:
    """Every ours/MONAI ratio of windows per second, named so a reader knows what was compared."""
    out: dict[str, float] = {}
    for monai in (r for r in rows if r.pipeline == "monai"):
        for ours in (r for r in rows if r.pipeline == "ours" and r.dims == monai.dims):
            if ours.precision == monai.precision or (ours.asked == "auto" and monai.precision == "fp32"):
                name = f"{monai.dims} ours {ours.asked}({ours.precision}) / MONAI {monai.precision} w{monai.workers}"
                out[name] = round(ours.windows_per_second / monai.windows_per_second, 3)
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in items)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 30, --quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them, at least 1 (default 5, "
                                                   "--quick 1)")
    parser.add_argument("--batch-size", type=int, help="windows per step, both pipelines (default 2D 4, 3D 2)")
    parser.add_argument("--workers", help="MONAI loader processes, comma-separated runs (default CPU 0,2; CUDA 8; "
                                          "--quick 0,1)")
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="torch threads of both pipelines (ours: the job's workers field)")
    parser.add_argument("--only", choices=["2d", "3d"])
    parser.add_argument("--quick", action="store_true", help="tiny windows, 2 steps: a smoke test, not saved")
    parser.add_argument("--data", type=Path, default=DATA, help=f"folder of plate2d/ and chloroplast3d/ ({DATA})")
    parser.add_argument("--monai-meta", choices=["on", "off"], default="on",
                        help="MONAI's MetaTensor tracking: on is its default; off (set_track_meta(False)) is its "
                             "fast-training recipe")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="override a job field for both pipelines, e.g. --only 3d --set window=[8,256,256]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="do not append to the results file")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    default_workers = "0,1" if args.quick else ("8" if args.device == "cuda" else "0,2")
    args.workers = [int(w) for w in (args.workers or default_workers).split(",")]
    if args.warmup < 1 or args.steps < 1:
        # Our steps are timed from one Progress event to the next: the clock starts at the end of a warm-up step.
        raise SystemExit("--warmup and --steps must be at least 1 (the first step pays one-off costs anyway)")
    args.overrides = parse_set(args.set)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here")
    if not (args.data / "plate2d" / "image.tif").exists():
        raise SystemExit(f"no data at {args.data} (want plate2d/ and chloroplast3d/ with image.tif, labels.tif)")

    import monai
    from monai.data import set_track_meta

    set_track_meta(args.monai_meta == "on")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    load_before = os.getloadavg()
    say(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  python {' '.join(map(shlex.quote, sys.argv))}")
    say(f"device {device.type}: {device_name(device)}; torch {torch.__version__}, monai {monai.__version__}, "
        f"{torch.get_num_threads()} threads, MONAI workers {args.workers}, MONAI meta tracking {args.monai_meta}")
    say(f"steps {args.steps} after {args.warmup} warm-up, seed {args.seed}; load average before: "
        f"{' '.join(f'{v:.2f}' for v in load_before)}")
    rows: list[Row] = []
    for dims in [args.only] if args.only else ["2d", "3d"]:
        rows.extend(run_dims(dims, args, device, say))
    say()
    for line in table(rows):
        say(line)
    ratios = pairings(rows)
    say("ours/MONAI = our windows/s over MONAI's (above 1 ours is faster; issue 6 asks for at least 1.2):")
    for name, ratio in ratios.items():
        say(f"  {name}: {ratio:.3f}")
    load_after = os.getloadavg()
    say(f"load average after: {' '.join(f'{v:.2f}' for v in load_after)}")
    summary = {
        "benchmark": "train_throughput", "device": device.type, "card": device_name(device),
        "torch": torch.__version__, "monai": monai.__version__, "threads": torch.get_num_threads(),
        "steps": args.steps, "warmup": args.warmup, "quick": args.quick, "monai_meta": args.monai_meta,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in args.overrides.items()},
        "rows": [row.summary() for row in rows], "ratios": ratios,
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
    }
    if not (args.no_save or args.quick):
        lines.append(json.dumps(summary))
        append("train_throughput", lines)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
