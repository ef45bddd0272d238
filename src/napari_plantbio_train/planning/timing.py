"""How long a training step of a candidate network takes on this machine: measured, not guessed, and remembered.

The plan compares candidate networks by their measured step time against the job's budget. A few real steps
(forward, loss, backward, optimiser) are timed after one warm-up step, in the job's number format and thread
count, and the seconds are kept per machine in the cache folder, so the same plan is made again at once (and
the plan is the same for the same data and machine figures). Times taken while the cores are busy with other
work are used for this job only, never kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..io.files import atomic_write_json
from ..models.losses import segmentation_loss
from ..models.network import UNet
from ..runtime.hardware import ISA_ENV, Machine, autocast_for, cache_folder, synthetic_batch

TIMES_FILE = "step-times.json"
TIMED_STEPS = 2
SHARED_SHARE = 0.5  # of the CPU time the threads could have had: below it, other work shared the cores


def step_seconds(network: dict[str, Any], window: tuple[int, ...], batch: int, mode: str, *, device: torch.device,
                 precision: str, threads: int, give_up_after: float | None = None) -> float:
    """Seconds per training step of ``network`` on ``batch`` windows; from the cache when this machine measured it.

    ``give_up_after``: when the warm-up step alone takes longer, that step's time is the answer (the candidate is
    too slow for the budget anyway, and timing more steps of it would only delay the job).
    """
    key = _key(network, window, batch, mode, device, precision, threads)
    cached = _read().get(key)
    if cached is not None:
        return float(cached)
    seconds, shared = _measure(network, window, batch, mode, device, precision, threads, give_up_after)
    if not shared:  # a time measured while other work shared the cores would mislead every later plan
        _write(key, seconds)
    return seconds


def _measure(network: dict[str, Any], window: tuple[int, ...], batch: int, mode: str, device: torch.device,
             precision: str, threads: int, give_up_after: float | None) -> tuple[float, bool]:
    """(seconds of the fastest timed step, whether the cores were shared meanwhile). Shared: this process got
    much less CPU time than its threads could use in the wall time (another busy process; seen on 2 cores to
    slow steps about 5x)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = UNet(**network).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, target = synthetic_batch(network, window, batch, mode, device)
        autocast = autocast_for(precision, device)
        times, cpu = [], []
        for step in range(1 + TIMED_STEPS):
            start, used = time.perf_counter(), time.process_time()
            with autocast:
                logits = model(x)
            segmentation_loss(logits.float(), target, mode).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - used)
            if step == 0 and give_up_after is not None and times[0] > give_up_after:
                break
        fastest = min(times[1:] or times)
        return fastest, device.type == "cpu" and sum(cpu) < SHARED_SHARE * threads * sum(times)
    finally:
        torch.set_num_threads(before)


def _key(network: dict[str, Any], window: tuple[int, ...], batch: int, mode: str, device: torch.device,
         precision: str, threads: int) -> str:
    machine = dataclasses.asdict(Machine.here(device))
    isa = os.environ.get(ISA_ENV)  # bf16 with AMX held off is another pace than with it
    return json.dumps({"machine": machine, "device": device.type, "precision": precision, "threads": threads,
                       **({"isa_limit": isa} if isa else {}),
                       "network": network, "window": list(window), "batch": batch, "mode": mode}, sort_keys=True)


def _path() -> Path:
    return cache_folder() / TIMES_FILE


def _read() -> dict[str, float]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(key: str, seconds: float) -> None:
    data = _read()
    data[key] = round(float(seconds), 4)
    with contextlib.suppress(OSError):
        atomic_write_json(_path(), data)
