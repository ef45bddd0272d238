"""The training loop, as a generator of events.

``train(...)`` is the only training loop in the project: the dock widget runs it in a napari worker thread,
the command line iterates it in the foreground, the tests iterate it directly. It reads top to bottom:
prepare the material once (targets, normalisation, validation block, network), then per iteration draw
windows, step, report; validate and preview now and then (and predict where the user looks, view.py);
checkpoint every ``iteration_save`` and when asked to stop. A stop request is honoured at the next
iteration and always leaves a checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..inference.semantic import min_confidence_from
from ..job.config import ConfigError, TrainConfig
from ..job.events import (CheckpointSaved, Event, Finished, Preview, Progress, Started, StopSignal, Validation,
                          run_to_end, stop_requested)
from ..models.losses import segmentation_loss
from ..models.lock import FolderLock
from ..models.network import UNet
from ..models.store import ModelStore
from ..runtime.hardware import job_device, processes_per_machine
from ..runtime.memory import OutOfMemory, largest_fitting, out_of_memory_message, try_step
from .distributed import Rank, agree, gather, mean, weights_digest
from .setup import set_up
from .validation import PART_SCORES, holdout_windows, score_region
from .view import ViewFile, ViewPreviews, ViewSource

WARMUP_ITERATIONS = 100
# Of a time limit, the most a time-limited job's warm-up lasts (see lr_at).
WARMUP_TIME_SHARE = 0.1
# Of a job's time, at most what validations may take when the job chose its own interval: a proofreading round's
# held-out corrections took 2-7 s to score against 5 s for the 15 iterations between two validations, so a
# one-minute second round trained 67 iterations (139 with the share). A validation due past the share waits for the
# next due iteration; the last validation, and every one of an interval the user gave, are kept. The share counts
# the validation about to run (as long as the latest one): a round whose "before" was cheap (its kept block scored
# by the parent) otherwise spent 13 s of its minute on one more validation at iteration 40 (96 iterations in the
# minute; 137 with it counted, the last validation inside the minute).
VALIDATION_SHARE = 0.2
# Of a time limit, at most what is kept back for the validation that scores the last weights: the limit is when
# a job ends for its user, and a proofreading round's last validation (13 s on the chloroplast stack, 2 cores)
# used to come after its minute, while the user waited: 78.8 s from start to end (158 iterations), now 67.4 s
# (137; AMD EPYC, fp32).
FINAL_VALIDATION_SHARE = 0.25
# The version's best is chosen on the validation score smoothed over the job's validations (each counts 0.3, the
# history 0.7: about the last three), as nnU-Net chooses its best checkpoint on a moving average of its pseudo-Dice.
# A held-out block scores few objects (7 on the chloroplast stack: one object moves F1 by 0.14) or a narrow strip
# (plate: 0.88-0.90 from iteration 300 on), so the raw best was one lucky validation: the plate's iteration 600 of
# 3,584 (0.898) labelled the rows never trained on at IoU 0.908, its later checkpoints at 0.921-0.924; three
# chloroplast models' raw bests scored unseen F1 0.609/0.565/0.533, their last weights 0.636/0.652/0.533 (AMD EPYC,
# 2026-12-07). A smoothed score only rises while the scores stay above it, so a real decline still holds the best
# back, and a new best's own score is always above the parent's, which opens the average.
SCORE_SMOOTHING = 0.7


def validation_waits(last: bool, validating: float, reserve: float, elapsed: float, limit: float) -> bool:
    """Whether a due validation of an interval the job chose waits for the next due iteration.

    It waits while validations would take more than ``VALIDATION_SHARE`` of the job's time (``validating`` so far,
    plus this one, as long as the latest: ``reserve``), and when the time limit's own final validation would
    follow it after less training than it costs itself: both would score nearly the same weights. A one-minute
    proofreading round validated at iteration 225 and again at 234, its final one, 15 s of its 60 (chloroplast
    stack, 2 cores, 2026-12-07). The last iteration's validation never waits.
    """
    if last:
        return False
    if validating + reserve > VALIDATION_SHARE * elapsed:
        return True
    # Training left before the final validation (kept back: ``reserve``), less this validation's own seconds.
    return bool(limit) and limit - elapsed - 2 * reserve < reserve


def lr_at(iteration: int, progress: float, base_lr: float, warmup: int, time_share: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to 1% of the base by ``progress`` = 1.

    ``progress`` is the larger of the iteration share and the time-limit share, so a job that will be cut by
    its time limit still anneals before it ends instead of stopping at a high learning rate. ``time_share`` is
    the time-limit share alone (0 for a job without a limit): a time-limited job's warm-up also ends with
    ``WARMUP_TIME_SHARE`` of its time. Sized by the iteration cap alone, a one-minute proofreading round (cap
    1,000, so 100 iterations of warm-up) spent 100 of its 106-151 iterations warming up, then fell from the peak
    to a tenth of it within ten iterations (benchmarks/proofread_round.py, 2026-12-04). Iteration-bound jobs
    keep their iteration warm-up: ending it by the iteration share as well shortened a 20-iteration job's ramp.
    """
    ramp = max((iteration + 1) / warmup, min(max(time_share, 0.0), 1.0) / WARMUP_TIME_SHARE)
    if ramp <= 1.0:
        return base_lr * ramp
    progress = min(max(progress, 0.0), 1.0)
    return base_lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *,
          extra_pairs: Sequence[tuple[np.ndarray, np.ndarray]] = (), auto_labels: np.ndarray | None = None,
          reviewed: np.ndarray | None = None, models_dir: str | Path | None = None, resume: bool = False,
          stop: StopSignal = None, rank: Rank | None = None,
          view: ViewSource | None = None) -> Generator[Event, None, Path]:
    """Train (or resume) the named model; yields events and returns the model folder.

    `extra_pairs` are more (image, labels) pairs sampled beside the first in the shares `config.pair_weights`;
    `auto_labels` is the auto-label result the first labels were corrected from (`config.touched_only`), and
    `reviewed` where the user reviewed them (painted, erased or accepted), trusted beside what changed.
    `rank` places this process in a data-parallel job (see distributed.py; its process group already joined):
    every rank runs the whole loop on its own windows, rank 0 alone writes the model folder and yields events.
    `view` says where the user looks, for the view previews (view.py); by default the request file a dock writes
    into the model folder, so a job in a child process and one in a thread are steered alike.
    """
    if rank is None and processes_per_machine(config) > 1:
        # Several processes cannot live in this one: a silent one-device job would not be what was asked for.
        field = "gpus" if job_device(config) == "cuda" else "cpu_processes"
        raise ConfigError(field, f"{processes_per_machine(config)} processes train as a job of their own: start it "
                                 "with the command line (napari-plantbio-train train), which launches them")
    rank = rank if rank is not None else Rank(device=job_device(config))
    events = _train(config, image, labels, extra_pairs=extra_pairs, auto_labels=auto_labels, reviewed=reviewed,
                    models_dir=models_dir, resume=resume, stop=stop, rank=rank, view=view)
    if rank.is_main:
        return (yield from _owning(ModelStore(models_dir), config.name, events))
    while True:  # the other ranks do the same work with nothing to report
        try:
            next(events)
        except StopIteration as done:
            return done.value


def _owning(store: ModelStore, name: str, events: Generator[Event, None, Path]) -> Generator[Event, None, Path]:
    """The job's events while this process holds the model folder's lock (models/lock.py), taken before the job
    checks or writes anything and released when it ends, however it ends. A job that ends before its first
    checkpoint removes the folder it created, so its name is free again and no unfinished folder is left."""
    with FolderLock(store.root, name):
        created = not store.folder(name).exists()
        try:
            return (yield from events)
        except BaseException:
            if created and not store.exists(name):
                shutil.rmtree(store.folder(name), ignore_errors=True)
            raise


def _train(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *,
           extra_pairs: Sequence[tuple[np.ndarray, np.ndarray]], auto_labels: np.ndarray | None,
           reviewed: np.ndarray | None, models_dir: str | Path | None, resume: bool, stop: StopSignal,
           rank: Rank, view: ViewSource | None) -> Generator[Event, None, Path]:
    run = set_up(config, image, labels, extra_pairs=extra_pairs, auto_labels=auto_labels, reviewed=reviewed,
                 models_dir=models_dir, resume=resume, rank=rank)
    config, material, model, net, forward = run.config, run.material, run.model, run.net, run.forward
    optimizer, writer, device, autocast, batches = run.optimizer, run.writer, run.device, run.autocast, run.batches
    start, best_score, folder = run.start, run.best_score, run.folder
    best_tiebreak, smoothed, best_smoothed = run.best_tiebreak, run.smoothed, run.best_smoothed
    target_dtype = torch.long if config.mode == "semantic" else torch.float32

    validated = bool(material.holdout.parts)
    views: ViewPreviews | None = None
    if writer is not None:  # rank 0, which alone reports
        if view is None:
            view = ViewFile(folder)
            view.clear()  # an earlier job's request is not one to this job: the dock writes anew on Started
        views = ViewPreviews(view, material, config)
    yield Started(folder, config.iterations, start, material.window, device.type, material.val_region,
                  precision=run.verdict.precision, batch_hint=run.batch_hint, precision_reason=run.verdict.reason,
                  plan=tuple(run.plan.lines()) if run.plan is not None else (), batch_size=config.batch_size,
                  lr=config.lr, disk_bytes=writer.planned_bytes(model) if writer is not None else None,
                  validation_note=material.holdout.note)
    began, limit = time.perf_counter(), (config.time_limit_min or 0) * 60.0
    seconds_ema: float | None = None
    validating = 0.0  # seconds spent scoring the held-out parts so far
    reserve = 0.0  # seconds the last validation will take, as the latest one measured them (rank 0)
    every_window = holdout_windows(material)
    iteration, last_saved, last_validated, reason = start, start, start, "completed"

    def validation(at: int, parent: bool = False) -> Generator[Event, None, dict]:
        """Score what is held out, show it, and keep the weights if the smoothed score is the best so far.
        ``parent``: the weights the job starts from, scored before its first step: the round's "before", of which
        the parts the parent scored itself are not predicted again, and the first candidate for the version's
        best."""
        nonlocal best_score, best_tiebreak, smoothed, best_smoothed, validating, reserve
        tick = time.perf_counter()
        given = run.before_given if parent else None
        result = score_region(model, material, config, device, autocast, given)
        validating += time.perf_counter() - tick
        predicted = holdout_windows(material, skip=given) if given else every_window
        if limit and predicted:
            reserve = min(FINAL_VALIDATION_SHARE * limit, (time.perf_counter() - tick) * every_window / predicted)
        finite = math.isfinite(result.score)
        if finite:
            # (as a step towards the new score, so that equal scores leave it exactly as it was)
            smoothed = (result.score if smoothed is None
                        else smoothed + (1 - SCORE_SMOOTHING) * (result.score - smoothed))
        candidate = smoothed if finite else result.score
        # None kept: an equal score wins. A job resumed from before smoothing compares with its raw best, and a
        # best that scored NaN (a semantic block without the class) gives way to any finite score.
        reference = best_smoothed if best_smoothed is not None else best_score
        reference = reference if reference is None or math.isfinite(reference) else -math.inf
        kept = (reference, -math.inf if best_tiebreak is None else best_tiebreak)
        # A parent that cannot be scored is no candidate: nothing trained would beat its NaN.
        is_best = ((best_score is None or (candidate, result.tiebreak) > kept) and (finite or not parent))
        yield Validation(at, result.score, result.metrics, is_best)
        if result.offset is not None:
            yield Preview(at, result.probabilities, result.labels, result.offset, result.channel_names)
        # Plain finite numbers or nothing: model.json refuses NaN (a semantic part with no class present scores it).
        parts = {k: result.metrics[k] for k in PART_SCORES if math.isfinite(result.metrics.get(k, math.nan))}
        if is_best:
            # Trained weights that equal the parent's score win: the parent's tiebreak leaves out the parts it was
            # given (it does not compare with a full one), and a round's weights have seen the corrections.
            best_score, best_tiebreak = result.score, (None if parent else result.tiebreak)
            best_smoothed = candidate if finite else None
            writer.describe(best_parts=parts, best_tiebreak=best_tiebreak, best_smoothed=best_smoothed)
            if result.confidence is not None:
                # The best weights' own measure of a region sure enough to keep (inference/semantic.py).
                writer.describe(postprocess={**(material.postprocess or {}),
                                             "min_confidence": min_confidence_from(result.confidence)})
            yield CheckpointSaved(at, writer.save_best(at, _cpu_state(model), best_score), "best")
        writer.describe(score_smoothed=smoothed)  # where a resumed job's average goes on from
        model.train()
        return {"validation_score": result.score if finite else None, **parts}

    def accumulate() -> tuple[float, float]:
        """Gradients of `iteration_step` batches (one optimiser step); returns (loss, seconds waiting for data)."""
        data_seconds, loss_sum = 0.0, 0.0
        for k in range(config.iteration_step):
            t = time.perf_counter()
            x, y, trusted = next(batches)
            x = _squeeze_z(x, config.spatial_dims).to(device, non_blocking=True)
            y = _squeeze_z(y, config.spatial_dims).to(device, dtype=target_dtype, non_blocking=True)
            if trusted is not None:
                trusted = _squeeze_z(trusted, config.spatial_dims).to(device, non_blocking=True)
            data_seconds += time.perf_counter() - t
            with autocast, _sync_gradients(net, last=k == config.iteration_step - 1):
                logits = forward(x)
            # The loss sums over every voxel: in fp32, where bf16's 8-bit mantissa would lose small terms.
            loss = segmentation_loss(logits.float(), y, config.mode, trusted) / config.iteration_step
            loss.backward()
            loss_sum += float(loss.detach())
        return loss_sum, data_seconds

    def save(at: int, keep: bool = True) -> Path | None:
        """Every rank, at the same iterations: record that the replicas agree; rank 0 writes the checkpoint."""
        state = _full_state(model, optimizer, at)
        replicas = gather(rank, weights_digest(state["model"])) if rank.distributed else None
        if writer is None:
            return None
        if replicas is not None:
            writer.describe(replica_weights=replicas)
        return writer.save(at, state, keep=keep)

    if writer is not None and validated and config.init_from is not None and start == 0:
        # The parent's weights on what this job holds out: the "before" of the round, for the dock and model.json,
        # and the version's best until a step beats them. A one-minute proofreading round that scored below its
        # parent on both held-out corrections and the kept block also labelled the tissue nobody corrected worse in
        # 9 of 13 rounds (benchmarks/proofread_round.py, 2026-12-04 and -06): such a version keeps the parent's
        # weights as its best, and its last weights beside them.
        before = yield from validation(0, parent=True)
        writer.describe(validation_before=before)
        writer.log({"iteration": 0, **before, "elapsed_seconds": time.perf_counter() - began})
    model.train()
    while iteration < config.iterations:
        # The clock runs ahead by the last validation's seconds (rank 0's, which validates; the others agree on
        # the largest), so that training, its learning-rate schedule included, ends in time for it.
        stopping, elapsed = agree(rank, stop_requested(stop), time.perf_counter() - began + reserve)
        if stopping:
            reason = "stopped"
            break
        if limit and elapsed >= limit:
            reason = "time limit"
            break
        iteration += 1
        time_share = elapsed / limit if limit else 0.0
        progress = max(iteration / config.iterations, time_share)
        lr = lr_at(iteration - 1, progress, config.lr, min(WARMUP_ITERATIONS, config.iterations // 10 + 1),
                   time_share)
        for group in optimizer.param_groups:
            group["lr"] = lr

        tick = time.perf_counter()
        try:
            loss_sum, data_seconds = accumulate()
            out_of_memory = False
        except OutOfMemory:
            out_of_memory = True  # handled outside the except clause, once the failed step's tensors are freed
        if out_of_memory:
            raise _out_of_memory(model, optimizer, config, material.window, device, autocast)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = mean(rank, loss_sum)
        seconds = time.perf_counter() - tick
        seconds_ema = seconds if seconds_ema is None else 0.9 * seconds_ema + 0.1 * seconds
        yield Progress(iteration, config.iterations, loss_sum, lr, seconds, data_seconds,
                       _eta(iteration, config.iterations, seconds_ema, limit, time.perf_counter() - began))

        row = {"iteration": iteration, "loss": loss_sum, "lr": lr, "seconds_per_iteration": seconds,
               "data_seconds": data_seconds, "elapsed_seconds": time.perf_counter() - began}
        due = iteration % config.validate_every == 0 or iteration == config.iterations
        waits = run.paced_validation and validation_waits(iteration == config.iterations, validating, reserve,
                                                          time.perf_counter() - began, limit)
        if writer is not None and validated and due and not waits:
            row.update((yield from validation(iteration)))  # the other ranks wait for it at the next agreement
            last_validated = iteration
        if views is not None and views.wanted(due):
            # Where the user looks, at each validation (unless the user turned that off) and when asked (a stat
            # per iteration otherwise).
            shown = views.predict(model, iteration, device, autocast, seconds_ema)
            if shown is not None:
                yield shown
        if writer is not None and (iteration % config.log_every == 0 or "validation_score" in row):
            writer.log(row)
        if iteration % config.iteration_save == 0:
            path = save(iteration)
            last_saved = iteration
            if path is not None:
                yield CheckpointSaved(iteration, path, "save")

    if writer is not None and validated and reason == "time limit" and last_validated != iteration:
        # A time-limited job is a finished job for its user: score what it reached (a stop request skips this
        # to end quickly).
        scores = yield from validation(iteration)
        writer.log({"iteration": iteration, **scores, "elapsed_seconds": time.perf_counter() - began})
    if writer is not None and not validated:
        # Nothing to choose by: the end of the schedule is the best this job can vouch for.
        yield CheckpointSaved(iteration, writer.save_best(iteration, _cpu_state(model), None), "best")
    # Decided alike on every rank (the save compares replicas): a new model has no checkpoint until it saves one.
    if iteration != last_saved or not (resume or last_saved != start):
        final = reason == "completed"
        path = save(iteration, keep=final)
        if path is not None:
            yield CheckpointSaved(iteration, path, "final" if final else "stop")
    yield Finished(iteration, folder, reason != "completed", reason, best_score)
    return folder


def _sync_gradients(net: torch.nn.Module, *, last: bool) -> contextlib.AbstractContextManager:
    """Accumulated batches average their gradients across ranks once, on the iteration's last backward."""
    if last or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def _out_of_memory(model: UNet, optimizer: torch.optim.Optimizer, config: TrainConfig, window: tuple[int, ...],
                   device: torch.device, autocast) -> ConfigError:
    """The error a job ends with when a step does not fit: the largest batch and window that do."""
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fitting = largest_fitting(lambda b, w: try_step(model, b, w, device, autocast), config.batch_size, window,
                              tuple(model.divisor))
    return ConfigError("batch_size", out_of_memory_message(device, config.batch_size, window, fitting))


def _squeeze_z(array: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Windows are drawn as (..., Z, Y, X); a 2D network wants the one-slice z axis gone."""
    return array[..., 0, :, :] if spatial_dims == 2 else array


def _eta(iteration: int, total: int, seconds: float, limit: float, elapsed: float) -> float:
    eta = (total - iteration) * seconds
    return min(eta, max(0.0, limit - elapsed)) if limit else eta


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> dict:
    return {"model": _cpu_state(model), "optimizer": optimizer.state_dict(), "iteration": iteration}


__all__ = ["train", "lr_at", "run_to_end", "validation_waits"]
