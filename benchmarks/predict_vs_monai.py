"""Whole-stack prediction speed of our sliding window against MONAI's ``sliding_window_inference``.

Both paths get the same network weights, the same normalised input, the same predictor (logits to sigmoid or
softmax probabilities, as ``validate.make_predictor`` builds it), the same window, overlap and windows per
batch, and Gaussian blending with sigma = 0.125 x window on each side. Each runs once on a small crop as
warm-up, then on the whole stack (or ``--crop``), alternating ours / MONAI when ``--repeats`` > 1; the median
is reported. Prints voxels per second of each, their ratio, the time spent inside the predictor (the rest is
the sliding window's own overhead: cutting windows, weighting, accumulating, dividing) and how far the two
probability maps are apart.

Ours runs at the precision auto-label uses (``--precision auto``: bf16 where the hardware runs it natively,
such as CUDA GPUs and CPUs with AVX512-BF16); MONAI gets fp32, which is what ``sliding_window_inference`` gives
unless the caller adds autocast (``--monai-precision bf16`` does). ``--precision fp32`` compares the two
sliding windows alone.

The network is a trained model of ours (``--model NAME --models-dir DIR``) or, by default, a freshly
initialised U-Net built like the benchmark job in ``train_real.py`` with a fixed seed: throughput and the
agreement of the two blends do not depend on training.

The two blends are not bit-identical even with the same windows: MONAI's Gaussian is not rescaled to a peak
of 1 before its 1e-3 floor is applied, so with a 4-slice window (sigma 0.5 along z, centre weight 0.61) its
floor sits higher relative to the centre than ours, and window corners are weighted differently.
``--monai-weights ours`` hands MONAI our weight map instead, which isolates everything else.

Run it alone: another busy process on a 2-core machine distorts the numbers. The load average is printed
beside them for that reason. The report is appended to ``benchmarks/results/predict_vs_monai.txt``.

    .venv/bin/python benchmarks/predict_vs_monai.py [--task chloroplast|plate] [--repeats 3]
    .venv/bin/python benchmarks/predict_vs_monai.py --crop 10,512,512 --repeats 1    # a quick smoke test
    .venv/bin/python benchmarks/predict_vs_monai.py --model NAME --models-dir DIR
    .venv/bin/python benchmarks/predict_vs_monai.py --ours some.module.blockwise_predict
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402

from napari_plantbio_train.planning.window import network_for, window_for  # noqa: E402
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.models.normalisation import Normalisation
from napari_plantbio_train.models.network import UNet
from napari_plantbio_train.inference.sliding import gaussian_weights, window_starts
from napari_plantbio_train.runtime.hardware import Probe, choose_precision
from napari_plantbio_train.inference.predictor import make_predictor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIGMA_SCALE = 0.125  # what predict.gaussian_weights uses by default

# The networks of the two jobs in train_real.py (kept here so this benchmark does not change when that one's
# training settings do). Voxel size matters: it decides where the 3D network keeps flat (1, 3, 3) kernels.
TASKS = {
    "chloroplast": dict(folder="chloroplast3d", mode="instance", dims="3d", voxel_size=(5.0, 5.0, 50.0),
                        window=(4, 256, 256), stem_stride=2, base_channels=16, depth=4),
    "plate": dict(folder="plate2d", mode="semantic", dims="2d", voxel_size=(1.0, 1.0, 1.0),
                  window=(256, 256), stem_stride=2, base_channels=16, depth=4),
}


def resolve(dotted: str) -> Callable[..., Any]:
    """``package.module.function`` or ``package.module:function`` to the object it names."""
    if ":" in dotted:
        module, _, attr = dotted.partition(":")
        return getattr(importlib.import_module(module), attr)
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"cannot import {dotted!r}")


class TimedPredictor:
    """The shared predictor, counting the seconds spent inside it (network, activation, device copies)."""

    def __init__(self, predictor: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.predictor = predictor
        self.seconds = 0.0
        self.calls = 0
        self.windows = 0

    def reset(self) -> None:
        self.seconds, self.calls, self.windows = 0.0, 0, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.predictor(x)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.windows += x.shape[0]
        return out


def run_ours(function, predictor, image: np.ndarray, spatial_dims: int, window, overlap, batch_size) -> np.ndarray:
    out = function(predictor, image, spatial_dims=spatial_dims, window=tuple(window), overlap=overlap,
                   batch_size=batch_size)
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def run_monai(predictor, image: np.ndarray, spatial_dims: int, window, overlap, batch_size, *,
              weight_map: torch.Tensor | None, padding_mode: str) -> np.ndarray:
    """MONAI on the same (Z, Y, X) float32 array: one (1, 1, Z, Y, X) volume for a 3D model, the slices as a
    batch of (1, Y, X) images for a 2D model; returns (K, Z, Y, X). MONAI slides over every image of a batch and
    fills its window batches across slice borders, where our predict_stack runs slice by slice."""
    from monai.inferers import sliding_window_inference

    tensor = torch.from_numpy(image)
    inputs = tensor[None, None] if spatial_dims == 3 else tensor[:, None]
    # MONAI leaves autograd to the caller; inference mode is how it is normally called for prediction.
    with torch.inference_mode():
        out = sliding_window_inference(inputs, roi_size=tuple(window), sw_batch_size=batch_size,
                                       predictor=predictor, overlap=overlap, mode="gaussian",
                                       sigma_scale=SIGMA_SCALE, padding_mode=padding_mode,
                                       roi_weight_map=weight_map)
    out = torch.as_tensor(out)
    return (out[0] if spatial_dims == 3 else out.transpose(0, 1)).numpy()


def monai_grid(size: int, window: int, overlap: float) -> list[int]:
    """Window origins MONAI's sliding_window_inference uses along one axis (its scan interval truncates,
    ours rounds; the last window is moved back to end at the border in both)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = max(size, window)
    interval = _get_scan_interval((size,), (window,), 1, (overlap,))
    return [s[0].start for s in dense_patch_slices((size,), (window,), interval)]


def weight_comparison(window: tuple[int, ...]) -> str:
    """How MONAI's Gaussian differs from ours once both are scaled to a peak of 1 (only ratios matter)."""
    from monai.data.utils import compute_importance_map

    ours = torch.from_numpy(gaussian_weights(window, SIGMA_SCALE)).double()
    theirs = compute_importance_map(window, mode="gaussian", sigma_scale=SIGMA_SCALE, device="cpu",
                                    dtype=torch.float32).double()
    peak = float(theirs.max())
    ours_n, theirs_n = ours / ours.max(), theirs / peak
    rel = ((theirs_n - ours_n).abs() / ours_n).max().item()
    floor_ours = (ours <= 1e-3 * (1 + 1e-6)).double().mean().item()
    floor_theirs = (theirs <= 1e-3 * (1 + 1e-6)).double().mean().item()
    return (f"blend weights: MONAI peak {peak:.4f} (ours 1), floor 1e-3 absolute = {1e-3 / peak:.2e} of its peak "
            f"(ours 1.00e-03); window voxels on the floor: MONAI {floor_theirs:.1%}, ours {floor_ours:.1%}; "
            f"max relative difference after rescaling to peak 1: {rel:.3g}")


def warmup_crop(shape: tuple[int, ...], window: tuple[int, ...], spatial_dims: int) -> tuple[slice, ...]:
    """A region of two windows per axis (fewer where the stack is smaller): every code path runs once."""
    win3 = window if spatial_dims == 3 else (1, *window)
    return tuple(slice(0, min(s, w + w // 2)) for s, w in zip(shape, win3))


def parse_crop(text: str | None, shape: tuple[int, ...]) -> tuple[slice, ...]:
    if not text:
        return tuple(slice(None) for _ in shape)
    sizes = [int(v) for v in text.split(",")]
    if len(sizes) == 2:
        sizes = [shape[0], *sizes]
    if len(sizes) != 3 or min(sizes) < 1:
        raise SystemExit(f"--crop wants Z,Y,X (or Y,X) positive sizes, got {text!r}")
    return tuple(slice(0, min(s, c)) for s, c in zip(shape, sizes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASKS), default="chloroplast",
                        help="which stack and which default network (default chloroplast)")
    parser.add_argument("--image", type=Path, help="another (Z, Y, X) or (Y, X) tif instead of the task's image")
    parser.add_argument("--model", help="a trained model's name (default: a fresh U-Net with a fixed seed)")
    parser.add_argument("--models-dir", type=Path, help="the models folder holding --model")
    parser.add_argument("--window", help="window as Z,Y,X (3D) or Y,X (2D); default the model's or the task's")
    parser.add_argument("--crop", help="predict only the top-left Z,Y,X (or Y,X) block, e.g. 10,512,512")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=2, help="windows per network call, both paths")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; median reported")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours", default="napari_plantbio_train.inference.sliding.predict_stack",
                        help="dotted name of our function: f(predictor, image, *, spatial_dims, window, overlap, "
                             "batch_size) -> (K, Z, Y, X)")
    parser.add_argument("--monai-weights", choices=["monai", "ours"], default="monai",
                        help="MONAI's own Gaussian (mode='gaussian', sigma_scale=0.125), or our weight map passed "
                             "as roi_weight_map to isolate the blend weights from the rest")
    parser.add_argument("--monai-padding", default="constant", choices=["constant", "reflect", "replicate"],
                        help="MONAI's padding when an axis is shorter than the window (ours reflects)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="ours: auto-label's precision (auto: bf16 where native, as auto-label runs)")
    parser.add_argument("--monai-precision", choices=["fp32", "bf16"], default="fp32",
                        help="MONAI's predictor: fp32 (what sliding_window_inference gives unless the caller adds "
                             "autocast) or bf16 autocast")
    parser.add_argument("--no-save", action="store_true", help="do not append to the results file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    job = TASKS[args.task]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    load_before = os.getloadavg()
    image_path = args.image or DATA / job["folder"] / "image.tif"
    if not image_path.exists():
        print(f"no image at {image_path}", file=sys.stderr)
        return 1
    raw = tifffile.imread(image_path)
    if raw.ndim == 2:
        raw = raw[None]

    if args.model:
        from napari_plantbio_train.models.store import ModelStore

        model, record = ModelStore(args.models_dir).load_model(args.model)
        mode, spatial_dims = record.config.mode, record.config.spatial_dims
        window = tuple(int(w) for w in record.window)
        normalisation = Normalisation.from_dict(record.normalisation)
        network = f"model {record.name!r} ({record.iterations_done} iterations) from {record.folder.parent}"
    else:
        config = TrainConfig(name="bench-predict", **{k: v for k, v in job.items() if k != "folder"})
        mode, spatial_dims = config.mode, config.spatial_dims
        window = window_for(config, raw.shape)
        if mode == "instance":
            out_channels = 2
        else:
            labels_path = DATA / job["folder"] / "labels.tif"  # the task's classes, whatever --image is
            out_channels = len(np.unique(tifffile.imread(labels_path))) if labels_path.exists() else 2
        model = UNet(in_channels=1, out_channels=out_channels, **network_for(config, raw.shape))
        normalisation = Normalisation.fit(raw)  # on the whole stack, as training does
        network = f"fresh UNet (seed {args.seed}) like train_real's {job['folder']} job"
    if args.window:
        window = tuple(int(v) for v in args.window.split(","))
    if len(window) == 3 and spatial_dims == 2 and window[0] == 1:
        window = window[1:]
    model = model.to(device).eval()
    # Ours runs as auto-label runs it (this machine's precision verdict, see hardware.py); MONAI's
    # sliding_window_inference leaves precision to the caller, who gets fp32 unless they add autocast.
    precision = choose_precision(args.precision, device, Probe(model.spec, window, 1, mode)).precision
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    monai_autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.monai_precision == "bf16"
                      else contextlib.nullcontext())
    predictor = TimedPredictor(make_predictor(model, mode, device, autocast))
    monai_predictor = TimedPredictor(make_predictor(model, mode, device, monai_autocast))
    ours = resolve(args.ours)

    region = parse_crop(args.crop, raw.shape)
    image = np.ascontiguousarray(normalisation.apply(raw[region]))
    warm = np.ascontiguousarray(image[warmup_crop(image.shape, window, spatial_dims)])
    voxels = image.size
    spatial = image.shape if spatial_dims == 3 else image.shape[1:]
    weight_map = torch.from_numpy(gaussian_weights(window, SIGMA_SCALE)) if args.monai_weights == "ours" else None

    import monai

    say(f"=== {datetime.datetime.now().isoformat(timespec='seconds')}  predict_vs_monai  "
        f"{shlex.join(sys.argv[1:]) or '(defaults)'}")
    say(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, monai {monai.__version__}, "
        f"cpus {os.cpu_count()}")
    say(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}")
    say(f"image {image_path.name} full {tuple(raw.shape)}, predicted {tuple(image.shape)} "
        f"({voxels / 1e6:.2f} Mvoxel), normalisation low {normalisation.low:.2f} high {normalisation.high:.2f}")
    say(f"network: {network}; {mode} {spatial_dims}D, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
        f"parameters")
    say(f"precision: ours {precision} (--precision {args.precision}), MONAI {args.monai_precision}")
    say(f"window {window}, overlap {args.overlap}, batch {args.batch_size}, ours = {args.ours}, MONAI weights "
        f"{args.monai_weights}, MONAI padding {args.monai_padding}")
    grids_ours = [window_starts(max(s, w), w, args.overlap) for s, w in zip(spatial, window)]
    grids_monai = [monai_grid(s, w, args.overlap) for s, w in zip(spatial, window)]
    n_windows = int(np.prod([len(g) for g in grids_ours])) * (1 if spatial_dims == 3 else image.shape[0])
    say(f"windows per run: {n_windows} (origins per axis {[len(g) for g in grids_ours]}); MONAI's grid "
        f"{'is the same' if grids_ours == grids_monai else 'DIFFERS: ' + str([len(g) for g in grids_monai])}")
    if any(s < w for s, w in zip(spatial, window)):
        say(f"note: an axis is shorter than the window; ours pads by reflection, MONAI by {args.monai_padding}")
    say(weight_comparison(window) if args.monai_weights == "monai" else "blend weights: MONAI uses ours")

    common = dict(spatial_dims=spatial_dims, window=window, overlap=args.overlap, batch_size=args.batch_size)
    runners = {
        "ours": lambda x: run_ours(ours, predictor, x, **common),
        "monai": lambda x: run_monai(monai_predictor, x, **common, weight_map=weight_map,
                                     padding_mode=args.monai_padding),
    }
    started = time.perf_counter()
    for runner in runners.values():
        runner(warm)
    say(f"warm-up on {tuple(warm.shape)}: {time.perf_counter() - started:.1f} s for both")

    seconds: dict[str, list[float]] = {name: [] for name in runners}
    inside: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):
        for name, runner in runners.items():
            timed = predictor if name == "ours" else monai_predictor
            timed.reset()
            start = time.perf_counter()
            out = runner(image)
            wall = time.perf_counter() - start
            seconds[name].append(wall)
            inside[name].append(timed.seconds)
            outputs.setdefault(name, out)  # the first run's maps are compared; later ones are dropped at once
            del out
            say(f"  run {repeat + 1} {name:5s}: {wall:8.2f} s, {voxels / wall / 1e6:7.3f} Mvoxel/s, predictor "
                f"{timed.seconds:7.2f} s ({timed.windows} windows in {timed.calls} calls), "
                f"other {wall - timed.seconds:6.2f} s")

    med = {name: statistics.median(v) for name, v in seconds.items()}
    med_inside = {name: statistics.median(v) for name, v in inside.items()}
    for name in runners:
        label = "ours " if name == "ours" else "MONAI"
        say(f"{label}: median {med[name]:.2f} s = {voxels / med[name] / 1e6:.3f} Mvoxel/s "
            f"({voxels / med[name]:.4g} voxel/s), predictor {med_inside[name]:.2f} s, sliding-window overhead "
            f"{med[name] - med_inside[name]:.2f} s ({(med[name] - med_inside[name]) / med[name]:.1%})")
    ratio = med["monai"] / med["ours"]
    say(f"throughput ratio ours/MONAI: {ratio:.3f} (voxels/s; above 1 ours is faster)")

    a, b = outputs["ours"], outputs["monai"]
    if a.shape != b.shape:
        say(f"output shapes differ: ours {a.shape}, MONAI {b.shape}")
        max_diff = mean_diff = float("nan")
    else:
        diff = np.abs(a - b)
        where = np.unravel_index(int(diff.argmax()), diff.shape)
        max_diff, mean_diff = float(diff.max()), float(diff.mean(dtype=np.float64))
        say(f"probabilities {tuple(a.shape)} (K, Z, Y, X): max |ours - MONAI| {max_diff:.3g} at "
            f"{tuple(map(int, where))}, mean {mean_diff:.3g}, share > 1e-3: {float((diff > 1e-3).mean()):.4%}, "
            f"share > 1e-5: {float((diff > 1e-5).mean()):.4%}; ours range [{a.min():.3f}, {a.max():.3f}]")
        del diff
    load_after = os.getloadavg()
    say(f"load average after: {' '.join(f'{v:.2f}' for v in load_after)}")
    summary = {
        "task": args.task, "image": image_path.name, "shape": list(image.shape), "window": list(window),
        "overlap": args.overlap, "batch_size": args.batch_size, "repeats": args.repeats, "device": str(device),
        "threads": torch.get_num_threads(), "ours": args.ours, "ours_precision": precision,
        "monai_precision": args.monai_precision, "monai_weights": args.monai_weights,
        "windows": n_windows, "ours_seconds": [round(s, 3) for s in seconds["ours"]],
        "monai_seconds": [round(s, 3) for s in seconds["monai"]],
        "ours_voxels_per_s": round(voxels / med["ours"]), "monai_voxels_per_s": round(voxels / med["monai"]),
        "ratio_ours_over_monai": round(ratio, 4), "max_abs_diff": max_diff, "mean_abs_diff": mean_diff,
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
    }
    say(json.dumps(summary))
    if not args.no_save:
        append("predict_vs_monai", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
