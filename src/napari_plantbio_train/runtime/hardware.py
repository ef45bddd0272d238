"""Which device and which number format a job runs on, and a verdict that the format works on this machine.

bf16 halves the memory traffic of every activation and runs on the matrix units of recent hardware, but only
where it is native: on an AMD EPYC with AVX512-BF16 a training step of the chloroplast job took 0.37 s in bf16
autocast against 0.70 s in fp32, while CPUs that only emulate bf16 run it slower than fp32. So "auto" considers
bf16 on CUDA GPUs that support it and on CPUs with AVX512-BF16 or AMX, and fp32 everywhere.

Native is not the same as working. On an Intel Sapphire Rapids CPU, oneDNN's AMX kernels crashed the process
(SIGSEGV) in the backward pass of our U-Net under bf16 autocast, a fault no Python ``try`` can catch; with
oneDNN held below AMX (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``) the same step ran in 4.9 s against 8.4 s in
fp32. So "auto" never picks a format it has not seen work here: a child process runs a forward and backward pass
of each step the caller will run in each candidate format, best first, and the first that survives them all is
the verdict, cached in the user's cache folder per machine (CPU model and flags, GPU, torch version) and per
step (network, window, batch, mode). Per step, not per network family: oneDNN picks its kernels by layer and
shape, and on the same Sapphire Rapids with torch 2.13.0 bf16 with AMX ran the planned 4x128x128 step (0.13 s
against 0.18 s with AMX off and 0.19 s in fp32) while a 3D transposed convolution on [2, 32, 4, 128, 128] of an
8x256x256 window crashed (benchmarks/amx_bf16_crash.py); a verdict kept per family let that window's job crash.
A crash in the child costs the child, never the caller (napari, a cluster job, a test run).

oneDNN reads its ISA limit once, at its first primitive, so AMX can only be turned off before a process computes
anything: the command line (and so the dock's job processes, which run it) declares itself fresh at its start
(``fresh_process``), and the verdict's limit is set before the first computation. A process that may have
computed already (a script calling ``train`` directly, napari) gets fp32 instead of a verdict that needs it.
Weights and optimiser state stay fp32 whatever the verdict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io.files import atomic_write_json
from ..job.config import ConfigError
from ..job.kinds import PRECISIONS
from ..models.losses import segmentation_loss
from ..models.network import UNet, network_spec

if TYPE_CHECKING:
    from ..job.config import TrainConfig

ISA_ENV = "ONEDNN_MAX_CPU_ISA"
AMX_OFF = "AVX512_CORE_BF16"  # oneDNN's ISA just below AMX: bf16 stays native, AMX's tile kernels are not used
CACHE_ENV = "PLANTBIO_CACHE_DIR"  # where verdicts are kept (default: the user cache folder)
FAULT_ENV = "PLANTBIO_PROBE_FAULT"  # test switch: candidates ("bf16,bf16-amx-off") whose probe crashes, or
# a candidate on one window only ("bf16@8x256x256"), as AMX crashed on one shape and ran another
PROBE_TIMEOUT_S = 600.0
VERDICTS_FILE = "precision-verdicts.json"


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError("device", f"{device!r} is not a device name (use 'cpu' or 'cuda')") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "no CUDA GPU is available here")
    return resolved


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def job_device(config: "TrainConfig") -> str:
    """Where a job trains: "cuda" when it asks for GPUs (or leaves #GPU on auto and CUDA is present), else "cpu"."""
    gpus = config.gpus if config.gpus is not None else min(1, cuda_device_count())
    return "cuda" if gpus >= 1 else "cpu"


def processes_per_machine(config: "TrainConfig") -> int:
    """Data-parallel processes a job runs on each machine: one per GPU, or ``cpu_processes`` on the CPU."""
    if job_device(config) == "cuda":
        return max(1, config.gpus or 1)
    return config.cpu_processes


@dataclass(frozen=True)
class Machine:
    """What decides whether a number format works: the processor, its bf16 and AMX units, the GPU, torch."""

    cpu: str
    bf16: bool  # AVX512-BF16 (native bf16 dot products)
    amx: bool  # AMX tiles (Intel Sapphire Rapids and later)
    gpu: str | None
    torch: str

    @classmethod
    def here(cls, device: torch.device) -> "Machine":
        cpu = torch.cpu
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        return cls(cpu=cpu_model(), bf16=bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
                   amx=bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()), gpu=gpu,
                   torch=torch.__version__)


def native_cpu_bf16(machine: Machine | None = None) -> bool:
    machine = machine or Machine.here(torch.device("cpu"))
    return machine.bf16 or machine.amx


@dataclass(frozen=True)
class Candidate:
    """A number format and, for bf16 on AMX CPUs, the oneDNN ISA limit it runs under."""

    precision: str
    isa_limit: str | None = None

    @property
    def name(self) -> str:
        return self.precision + ("-amx-off" if self.isa_limit == AMX_OFF else "")


def candidates(device: torch.device, machine: Machine) -> list[Candidate]:
    """Formats worth trying, fastest first; fp32 is always last."""
    found = []
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            found.append(Candidate("bf16"))
    elif native_cpu_bf16(machine):
        found.append(Candidate("bf16"))
        if machine.amx and machine.bf16:
            found.append(Candidate("bf16", AMX_OFF))
    return [*found, Candidate("fp32")]


@dataclass(frozen=True)
class Verdict:
    """The number format a job uses, the ISA limit it needs, and why (shown in the start line, kept in model.json)."""

    precision: str
    isa_limit: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(str(data["precision"]), data.get("isa_limit"), str(data["reason"]))


@dataclass(frozen=True)
class Probe:
    """A training step a probe runs: the network (its constructor arguments), window, batch and loss."""

    network: dict[str, Any]
    window: tuple[int, ...]
    batch: int
    mode: str

    @property
    def key(self) -> str:
        """The step as a verdict is kept for it: the same network given in other words is the same step."""
        return json.dumps({"network": network_spec(**self.network), "window": [int(w) for w in self.window],
                           "batch": int(self.batch), "mode": self.mode}, sort_keys=True)

    def describe(self) -> str:
        net = self.network
        return (f"window {'x'.join(str(w) for w in self.window)}, stem stride {net.get('stem_stride', 1)}, "
                f"depth {net.get('depth')}, batch {self.batch}")


Steps = Probe | Sequence[Probe]


def _steps(steps: Steps) -> list[Probe]:
    found: dict[str, Probe] = {}
    for step in [steps] if isinstance(steps, Probe) else steps:
        found.setdefault(step.key, step)
    return list(found.values())


def choose_precision(requested: str, device: torch.device, probe: Steps, *,
                     machine: Machine | None = None) -> Verdict:
    """The format a process runs in. An explicit "fp32" or "bf16" is the user's to choose and is used as asked;
    "auto" is the first candidate seen to work here for every step in ``probe`` (one format per process: oneDNN's
    ISA limit cannot change once it computed), from the cache or from probing now."""
    if requested not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return Verdict(requested, None, f"{requested} as asked (not verified here)")
    machine = machine or Machine.here(device)
    steps = _steps(probe)
    keys = [_key(machine, device, step) for step in steps]
    cache = _read_cache()
    cached = [cache.get(key) for key in keys]
    if cached[0] is not None and all(entry == cached[0] for entry in cached):
        return Verdict.from_dict(cached[0])  # every step judged, and alike (else the set is probed together)
    failures: list[str] = []
    for candidate in candidates(device, machine):
        works, detail = run_probe(candidate, device, steps)
        if works:
            verdict = Verdict(candidate.precision, candidate.isa_limit, _reason(candidate, machine, device, failures,
                                                                               detail))
            _write_cache(keys, verdict)
            return verdict
        failures.append(f"{_describe(candidate)} {detail}")
    raise ConfigError("precision", "no number format ran a training step on this machine: " + "; ".join(failures))


def usable(verdict: Verdict) -> Verdict:
    """The verdict as this process can run it, called just before its first computation.

    A verdict that needs oneDNN held below AMX gets the limit set now if this process has not computed yet (it
    was declared fresh by its entry point and nothing ran since); in a process that may have computed already,
    where the limit would be ignored, it becomes fp32.
    """
    global _FRESH
    fresh, _FRESH = _FRESH, False  # what follows this call computes
    if verdict.isa_limit is None or os.environ.get(ISA_ENV, "").upper() == verdict.isa_limit:
        return verdict
    if fresh and ISA_ENV not in os.environ:
        os.environ[ISA_ENV] = verdict.isa_limit
        return verdict
    return Verdict("fp32", None, f"fp32: {verdict.reason.split(':', 1)[0]} needs {ISA_ENV}={verdict.isa_limit} "
                                 "before the process first computes, and this one may have (the command line and "
                                 "the dock's job processes set it themselves)")


def fresh_process() -> None:
    """Called by an entry point (the command line, a job process) before anything computes: the verdict chosen
    later for the steps it runs may still set oneDNN's ISA limit (``usable``). Other verdicts of this machine set
    nothing here: they are per step, and a window that needed AMX off says nothing of the next job's (AMX ran the
    planned step in 0.13 s against 0.18 s without it)."""
    global _FRESH
    _FRESH = True


_FRESH = False

def step_aside() -> None:
    """A job the dock launched yields the cores to the viewer whenever it wants them: on a machine whose every
    core trains, napari's event loop otherwise waits behind the training threads (gaps of 200+ ms measured on 2
    cores by benchmarks/widget_responsiveness.py). An idle viewer costs the job nothing."""
    from ..io.wire import NICENESS_ENV

    niceness = os.environ.get(NICENESS_ENV)
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(int(niceness))
        except (OSError, ValueError):
            pass


def autocast_for(precision: str, device: torch.device) -> Any:
    """The context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----- the probe ------------------------------------------------------------------------------------------------
def run_probe(candidate: Candidate, device: torch.device, probe: Steps) -> tuple[bool, str]:
    """One training step of each of ``probe``'s steps in ``candidate``'s format, in one child process: (they all
    ran, what happened; a crash names the step it happened in)."""
    steps = _steps(probe)
    env = dict(os.environ)
    env.pop(ISA_ENV, None)
    if candidate.isa_limit is not None:
        env[ISA_ENV] = candidate.isa_limit
    request = {"candidate": candidate.name, "precision": candidate.precision, "device": str(device),
               "steps": [{"network": s.network, "window": list(s.window), "batch": s.batch, "mode": s.mode}
                         for s in steps]}
    try:
        done = subprocess.run([sys.executable, "-m", __name__, json.dumps(request)], env=env, capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"did not finish {len(steps)} step(s) within {PROBE_TIMEOUT_S:.0f} s"
    ran = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok ")]
    if done.returncode == 0 and len(ran) == len(steps):
        return True, f"ok {', '.join(ran)} s per step"
    where = f" on {steps[len(ran)].describe()}" if len(steps) > 1 and len(ran) < len(steps) else ""
    if done.returncode < 0:
        return False, f"crashed ({_signal_name(-done.returncode)}){where}"
    last = [line for line in (done.stderr or "").splitlines() if line.strip()]
    return False, f"failed{where} (exit status {done.returncode}{': ' + last[-1][:200] if last else ''})"


def synthetic_batch(network: dict[str, Any], window: tuple[int, ...], batch: int, mode: str,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random input and targets of a training step's shapes: what a probe runs and the planner times (the kernels
    a format picks depend on shapes, not on values)."""
    channels = int(network["out_channels"])
    x = torch.randn(batch, 1, *window, device=device)
    if mode == "semantic":
        return x, torch.randint(0, channels, (batch, *window), device=device)
    return x, (torch.rand(batch, channels, *window, device=device) > 0.5).float()


def _probe_main(request: dict[str, Any]) -> int:
    """The child's side: for each step, build the network, run one forward and backward pass, print ``ok
    <seconds>`` at once (so a crash in a later step still tells which ran)."""
    faults = {c.strip() for c in os.environ.get(FAULT_ENV, "").split(",")}
    device = torch.device(request["device"])
    for step in request["steps"]:
        window, batch = tuple(int(w) for w in step["window"]), int(step["batch"])
        size = "x".join(str(w) for w in window)
        if request["candidate"] in faults or f"{request['candidate']}@{size}" in faults:
            os.kill(os.getpid(), signal.SIGSEGV)  # the test switch: this probe dies as the AMX one did
        model = UNet(**step["network"]).to(device)
        x, target = synthetic_batch(step["network"], window, batch, step["mode"], device)
        start = time.perf_counter()
        with autocast_for(request["precision"], device):
            logits = model(x)
        loss = segmentation_loss(logits.float(), target, step["mode"])
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if not torch.isfinite(loss):
            print(f"the loss was {float(loss)}", file=sys.stderr)
            return 3
        print(f"ok {seconds:.2f}", flush=True)
    return 0


# ----- verdicts on disk -----------------------------------------------------------------------------------------
def cache_folder() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-plantbio-train", appauthor=False))


def _key(machine: Machine, device: torch.device, step: Probe) -> str:
    """The machine, then the step: a verdict holds for this step on this machine, torch and GPU only."""
    return f"{json.dumps(dataclasses.asdict(machine), sort_keys=True)} {device.type} {step.key}"


def _read_cache() -> dict[str, dict[str, Any]]:
    path = cache_folder() / VERDICTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: probing again is the safe answer
    return data if isinstance(data, dict) else {}


def _write_cache(keys: list[str], verdict: Verdict) -> None:
    data = _read_cache()
    data.update({key: verdict.to_dict() for key in keys})
    with contextlib.suppress(OSError):  # a read-only cache costs a probe next time, nothing else
        atomic_write_json(cache_folder() / VERDICTS_FILE, data)


def _reason(chosen: Candidate, machine: Machine, device: torch.device, failures: list[str], detail: str) -> str:
    where = device.type.upper() if device.type == "cuda" else "CPU"
    if chosen.precision == "bf16":
        why = f"native bf16 on this {where}"
    elif device.type == "cuda":
        why = "this GPU has no bf16"
    else:
        why = "no native bf16 on this CPU" if not native_cpu_bf16(machine) else "bf16 did not work here"
    tried = f"; {'; '.join(failures)}" if failures else ""
    day = datetime.date.today().isoformat()
    return f"{_describe(chosen)}: {why}{tried}; a training step ran in a probe ({detail.removeprefix('ok ')}, {day})"


def _describe(candidate: Candidate) -> str:
    return f"{candidate.precision} with AMX off" if candidate.isa_limit == AMX_OFF else candidate.precision


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


if __name__ == "__main__":
    sys.exit(_probe_main(json.loads(sys.argv[1])))
