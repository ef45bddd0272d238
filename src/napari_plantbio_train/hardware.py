"""Which device and which number format a job runs on.

bf16 halves the memory traffic of every activation and runs on the matrix units of recent hardware, but only
where it is native: on this project's CPU (AMD EPYC with AVX512-BF16) a training step of the chloroplast job
took 0.37 s in bf16 autocast against 0.70 s in fp32, and a forward pass 0.31 s against 0.56 s, while CPUs
that only emulate bf16 run it slower than fp32. So "auto" picks bf16 on CUDA GPUs that support it and on CPUs
with AVX512-BF16 or AMX, and fp32 elsewhere; weights and optimiser state stay fp32 either way.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .config import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


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


def native_cpu_bf16() -> bool:
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and native_cpu_bf16() else "fp32"


def autocast_for(precision: str, device: torch.device) -> Any:
    """The context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
