"""How much fits on the device: the batch-size hint at the start of a GPU job, and the message when it runs out.

A bare CUDA out-of-memory traceback tells a biologist nothing they can act on. Instead, after freeing what the
failed step held, the job tries the same network on smaller batches (and smaller windows) and ends with an
error naming the `batch_size` field and the largest values that fit. The checkpoints written before stay
complete: they are written atomically and the failed step never reaches one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OutOfMemory: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def try_step(model: torch.nn.Module, batch: int, window: tuple[int, ...], device: torch.device,
             autocast: Any) -> bool:
    """One forward and backward pass on random windows of this size: does it fit?"""
    x = None
    try:
        x = torch.randn(batch, 1, *window, device=device)
        with autocast:
            out = model(x)
        out.float().mean().backward()
        return True
    except OutOfMemory:
        return False
    finally:
        del x
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest_fitting(fits: Callable[[int, tuple[int, ...]], bool], batch: int, window: tuple[int, ...],
                    divisor: tuple[int, ...]) -> tuple[int | None, tuple[int, ...] | None]:
    """(largest batch that fits at `window`, largest window that fits at `batch`), halving each in turn.

    Windows shrink in-plane only (y and x, keeping the network's divisor): z is usually few slices already.
    None where nothing smaller fits either.
    """
    fitting_batch = next((b for b in _halvings(batch) if fits(b, window)), None)
    fitting_window = None
    current = list(window)
    while True:
        smaller = [max(d, (w // 2) // d * d) if i >= len(window) - 2 else w
                   for i, (w, d) in enumerate(zip(current, divisor))]
        if smaller == current:
            break
        current = smaller
        if fits(batch, tuple(current)):
            fitting_window = tuple(current)
            break
    return fitting_batch, fitting_window


def _halvings(batch: int) -> list[int]:
    out, b = [], batch // 2
    while b >= 1:
        out.append(b)
        b //= 2
    return out


def out_of_memory_message(device: torch.device, batch: int, window: tuple[int, ...],
                          fitting: tuple[int | None, tuple[int, ...] | None]) -> str:
    where = "the GPU" if device.type == "cuda" else "the computer"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where += f" ({torch.cuda.get_device_name(device)}, {total:.0f} GiB)"
    text = f"{where} ran out of memory at {batch} windows per batch of {_size(window)}"
    best_batch, best_window = fitting
    options = []
    if best_batch:
        options.append(f"samples per batch {best_batch} fits with this window")
    if best_window:
        options.append(f"window {_size(best_window)} fits with {batch} per batch")
    if not options:
        return text + "; even one window of half the size does not fit: use a smaller window and batch 1"
    return text + ": " + "; or ".join(options) + " (the last checkpoint is intact: resume from it)"


def _size(window: tuple[int, ...]) -> str:
    return "x".join(str(w) for w in window)


def suggest_batch_size(model: torch.nn.Module, window: tuple[int, ...], device: torch.device, autocast: Any,
                       share: float = 0.8) -> int | None:
    """Windows per batch that would use about `share` of the GPU's free memory, from measuring batches of 1
    and 2 (the difference is the cost of one window; the rest is weights and workspace). None off CUDA."""
    if device.type != "cuda":
        return None
    peaks = []
    for batch in (1, 2):
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        if not try_step(model, batch, window, device, autocast):
            return None
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_window = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int((free * share - (peaks[0] - per_window)) // per_window))
