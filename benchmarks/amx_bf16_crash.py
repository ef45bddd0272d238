"""Find the smallest network, shape and op whose bf16 backward pass crashes on this CPU, for a PyTorch bug report.

Seen on an Intel Xeon (Sapphire Rapids, AMX): the default 3D training step of this plugin's U-Net dies with
SIGSEGV in ``backward()`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``, and runs with
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` (AMX off). Every trial below runs in a child process, so a crash is a
result, not the end of the search:

1. the reported case (UNet 3D, base 16, depth 4, batch (2, 1, 8, 256, 256));
2. the network made smaller, one knob at a time (batch, window, depth, width), keeping what still crashes;
3. every layer of the smallest crashing network alone, forward and backward, at the input shape it sees there,
   as a plain ``torch.nn`` layer (our 3D convolutions run as 2D ones over slices: see model.py);
4. the first crashing layer shrunk further (channels, then spatial size).

It prints each trial and, at the end, a self-contained snippet of plain torch for the smallest crash found (or
says that nothing crashed here, as on CPUs without AMX). Each trial also runs with AMX off, to show the limit
is what saves it.

With ``--product`` it checks the product instead: the command line trains a few iterations of the chloroplast
job with ``--precision auto`` and a fresh verdict cache, on the plan's window and on windows AMX crashes on, each
in a child process; every job must exit 0 and say the format it chose (2026-12-07: a verdict kept per network
family let the 8x256x256 job crash with SIGSEGV; verdicts per step fixed it, see runtime/hardware.py).

    .venv/bin/python benchmarks/amx_bf16_crash.py [--quick | --product]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

REPORTED = {"network": dict(spatial_dims=3, in_channels=1, out_channels=2, base_channels=16, depth=4,
                            anisotropy=1.0, stem_stride=1, max_z_pools=3), "shape": [2, 1, 8, 256, 256]}
AMX_OFF = "AVX512_CORE_BF16"


def child(request: dict) -> None:
    """One trial: a whole network (``network``) or one plain layer (``layer``), forward and backward in bf16."""
    torch.manual_seed(0)
    if "network" in request:
        from napari_plantbio_train.models.network import UNet

        module = UNet(**request["network"])
    else:
        kind, args = request["layer"]
        module = getattr(torch.nn, kind)(**args)
    x = torch.randn(*request["shape"], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    y.float().square().mean().backward()
    print("ran")


def trial(request: dict, amx_off: bool = False) -> str:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if amx_off:
        env["ONEDNN_MAX_CPU_ISA"] = AMX_OFF
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode == 0:
        return "ran"
    if done.returncode < 0:
        return f"crashed ({_signal(-done.returncode)})"
    return f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:160]}"


def crashes(request: dict, label: str) -> bool:
    outcome = trial(request)
    extra = f"; AMX off: {trial(request, amx_off=True)}" if outcome.startswith("crashed") else ""
    print(f"{label:<70} {outcome}{extra}", flush=True)
    return outcome.startswith("crashed")


def smaller_network(case: dict) -> dict:
    """Shrink one knob at a time while the trial still crashes."""
    knobs = [("batch", lambda c: {**c, "shape": [max(1, c["shape"][0] // 2), *c["shape"][1:]]}),
             ("window z", lambda c: {**c, "shape": [*c["shape"][:2], max(2, c["shape"][2] // 2), *c["shape"][3:]],
                                     "network": {**c["network"], "max_z_pools": max(0, c["network"]["max_z_pools"] - 1)}}),
             ("window yx", lambda c: {**c, "shape": [*c["shape"][:3], max(16, c["shape"][3] // 2),
                                                     max(16, c["shape"][4] // 2)]}),
             ("depth", lambda c: {**c, "network": {**c["network"], "depth": max(1, c["network"]["depth"] - 1),
                                                   "max_z_pools": min(c["network"]["max_z_pools"],
                                                                      max(0, c["network"]["depth"] - 1))}}),
             ("width", lambda c: {**c, "network": {**c["network"],
                                                   "base_channels": max(1, c["network"]["base_channels"] // 2)}})]
    changed = True
    while changed:
        changed = False
        for name, shrink in knobs:
            candidate = shrink(case)
            if candidate != case and crashes(candidate, f"smaller {name}: {_case(candidate)}"):
                case, changed = candidate, True
    return case


def layers_of(case: dict) -> list[tuple[str, dict, list[int]]]:
    """Every leaf layer of the network as (torch.nn class, constructor arguments, input shape), traced in fp32."""
    from napari_plantbio_train.models.network import UNet

    model = UNet(**case["network"])
    seen: list[tuple[str, dict, list[int]]] = []

    def hook(module, inputs, _output):
        args = _arguments(module)
        if args is not None:
            entry = (type(module).__name__, args, list(inputs[0].shape))
            if entry not in seen:
                seen.append(entry)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.randn(*case["shape"]))
    for handle in handles:
        handle.remove()
    return seen


def _arguments(module: torch.nn.Module) -> dict | None:
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
        return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=list(module.kernel_size), stride=list(module.stride), padding=list(module.padding),
                    bias=module.bias is not None)
    if isinstance(module, torch.nn.GroupNorm):
        return dict(num_groups=module.num_groups, num_channels=module.num_channels)
    if isinstance(module, (torch.nn.MaxPool2d, torch.nn.MaxPool3d)):
        return dict(kernel_size=module.kernel_size, stride=module.stride)
    return None


def smaller_layer(kind: str, args: dict, shape: list[int]) -> tuple[dict, list[int]]:
    """Halve channels, batch, then spatial sizes while the single layer still crashes."""
    changed = True
    while changed:
        changed = False
        options = []
        if "in_channels" in args and args["in_channels"] > 1:
            options.append(({**args, "in_channels": args["in_channels"] // 2}, [shape[0], shape[1] // 2, *shape[2:]]))
        if "out_channels" in args and args["out_channels"] > 1:
            options.append(({**args, "out_channels": args["out_channels"] // 2}, shape))
        if shape[0] > 1:
            options.append((args, [shape[0] // 2, *shape[1:]]))
        for axis in range(2, len(shape)):
            if shape[axis] > 8:
                options.append((args, [*shape[:axis], shape[axis] // 2, *shape[axis + 1:]]))
        for new_args, new_shape in options:
            if crashes({"layer": [kind, new_args], "shape": new_shape}, f"  {kind} {new_args} on {new_shape}"):
                args, shape, changed = new_args, new_shape, True
                break
    return args, shape


def snippet(kind: str, args: dict, shape: list[int]) -> str:
    return textwrap.dedent(f"""\
        import torch  # {torch.__version__}, {platform.processor() or platform.machine()}
        layer = torch.nn.{kind}(**{args!r})
        x = torch.randn(*{shape!r}, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().square().mean().backward()  # SIGSEGV with AMX; runs with ONEDNN_MAX_CPU_ISA={AMX_OFF}
        """)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="only the reported case and its layers")
    parser.add_argument("--product", action="store_true", help="the command line's jobs on windows AMX crashes on")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    from napari_plantbio_train.runtime.hardware import cpu_model

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(f"torch {torch.__version__}, CPU {cpu_model()}, AMX {'yes' if amx else 'no'}, "
          f"AVX512-BF16 {'yes' if torch.cpu._is_avx512_bf16_supported() else 'no'}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.product:
        return product()
    case = REPORTED
    if not crashes(case, f"reported: {_case(case)}"):
        print("the reported case does not crash on this machine: nothing to narrow down")
        return 0
    if not args.quick:
        case = smaller_network(case)
    print(f"smallest crashing network: {_case(case)}", flush=True)
    for kind, layer_args, shape in layers_of(case):
        if crashes({"layer": [kind, layer_args], "shape": shape}, f"alone: {kind} {layer_args} on {shape}"):
            if not args.quick:
                layer_args, shape = smaller_layer(kind, layer_args, shape)
            print("\nA self-contained reproduction:\n\n" + snippet(kind, layer_args, shape))
            return 0
    print("\nNo single layer crashes alone: the crash needs the network's sequence of layers. Reproduce with:\n\n"
          f"    UNet(**{case['network']!r}) on torch.randn(*{case['shape']!r}) (napari_plantbio_train.model), "
          "forward under bf16 autocast, backward")
    return 0


PRODUCT_JOBS = {  # the command line's own fields beside data, mode and dims; none given: the plan's choices
    "plan's defaults": [],
    "8x256x256, stem 1, no flat levels (the reported case)": ["--window", "8,256,256", "--stem-stride", "1",
                                                               "--flat-levels", "0"],
    "4x256x256, stem 1": ["--window", "4,256,256", "--stem-stride", "1"],
}


def product() -> int:
    """Each job in a child process, one after the other, sharing one fresh verdict cache (as a user's machine
    would after the first job): exit status, the format and why, seconds per iteration."""
    import tempfile

    root = Path(__file__).resolve().parent.parent
    data = root.parent / "shared" / "data" / "chloroplast3d"
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PLANTBIO_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        for number, (label, fields) in enumerate(PRODUCT_JOBS.items()):
            command = [sys.executable, "-m", "napari_plantbio_train.cli", "train", "--image", str(data / "image.tif"),
                       "--labels", str(data / "labels.tif"), "--mode", "instance", "--dims", "3d", "--name",
                       f"amx-{number}", "--models-dir", str(Path(tmp) / "models"), "--iterations", "4",
                       "--validate-every", "4", "--log-every", "1", "--time-limit", "15", *fields]
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
            seconds = time.perf_counter() - started
            said = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith("precision")]
            pace = _pace(Path(tmp) / "models", f"amx-{number}")
            outcome = "exit 0" if done.returncode == 0 else (
                f"crashed ({_signal(-done.returncode)})" if done.returncode < 0 else f"exit {done.returncode}")
            failures += done.returncode != 0
            print(f"{label:<58} {outcome}, {seconds:.0f} s in all{pace}\n    {said[0] if said else '(no precision line)'}",
                  flush=True)
    return 1 if failures else 0


def _pace(models: Path, name: str) -> str:
    from napari_plantbio_train.models.catalogue import step_seconds_logged
    from napari_plantbio_train.models.store import ModelStore

    if not (models / name).is_dir():
        return ""
    seconds = step_seconds_logged(ModelStore(models), name)
    return f", {seconds:.2f} s per iteration (median)" if seconds else ""


def _case(case: dict) -> str:
    n = case["network"]
    return (f"{n['spatial_dims']}D depth {n['depth']} base {n['base_channels']} z-pools {n['max_z_pools']} on "
            f"{case['shape']}")


def _signal(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


if __name__ == "__main__":
    sys.exit(main())
