"""Everything a training job prepares once, before its first iteration.

nanoGPT keeps its set-up apart from its loop; so does this package. ``set_up`` checks the job against its data
and the models folder, prepares what the job learns from (``material``), builds or restores the network and its
optimiser (a resumed job's, or a parent's weights for a new version), chooses the number format this machine
has been seen to run (``runtime.hardware``), opens the model folder (rank 0 only) and starts the stream of
training windows. The loop (``loop.py``) then only steps, reports, validates and saves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.checks import as_stack, check_labels, check_stack
from ..job.config import ConfigError, TrainConfig
from ..models.catalogue import step_seconds_logged
from ..models.network import UNet
from ..models.store import ModelRecord, ModelStore, ModelWriter
from ..planning import network_for
from ..planning.plan import Plan, auto_fields, make_plan, timed_steps, version_interval
from ..runtime.hardware import Probe, Verdict, autocast_for, choose_precision, usable
from ..runtime.memory import suggest_batch_size
from .distributed import Rank, gather
from .loader import window_batches
from .known import painted
from .material import Material, checked, prepare, window3
from .rehearsal import Rehearsal, copy_rehearsal, read_rehearsal, write_rehearsal
from .validation import parent_scores


@dataclass
class Run:
    """A job ready to train: its parts, which the loop receives rather than builds."""

    config: TrainConfig  # as it runs: a continued model's inherited fields filled in
    material: Material
    model: UNet  # the network itself, which validation, previews and checkpoints use
    net: torch.nn.Module  # what the step calls: the network, or its data-parallel wrapper
    forward: Any  # net, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    writer: ModelWriter | None  # rank 0 only
    folder: Path
    start: int  # the iteration it starts from (a resumed job's last)
    best_score: float | None
    batches: Iterator
    device: torch.device
    verdict: Verdict
    autocast: Any
    batch_hint: int | None
    plan: Plan | None = None  # what the plan chose for the fields left empty (None: every field was given)
    paced_validation: bool = False  # validate_every was left to the job: validations keep to VALIDATION_SHARE
    best_tiebreak: float | None = None  # what broke the best score's ties (validation.RegionScore.tiebreak)
    smoothed: float | None = None  # the validation score's running average so far (loop.SCORE_SMOOTHING)
    best_smoothed: float | None = None  # that average when the best weights were kept
    before_given: dict[str, float] | None = None  # parts of the "before" the parent scored already (by part name)


def set_up(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *,
           extra_pairs: Sequence[tuple[np.ndarray, np.ndarray]], auto_labels: np.ndarray | None,
           models_dir: str | Path | None, resume: bool, rank: Rank, reviewed: np.ndarray | None = None) -> Run:
    """Check the job against its data, prepare the material, build (or restore) the network and its optimiser,
    choose the number format, open the model folder (rank 0) and start the window stream."""
    store = ModelStore(models_dir)
    paced = config.validate_every is None  # chosen below (plan, parent's pace or the resumed job's), not given
    if extra_pairs and not config.extra_images:  # arrays without names (a script): name them by position
        config = config.replace(extra_images=tuple(f"pair {i}" for i in range(2, len(extra_pairs) + 2)),
                                extra_labels=tuple(f"pair {i} labels" for i in range(2, len(extra_pairs) + 2)))
    # The fields' own rules, then the arrays' shape and dtype (a colour image is not read as a stack of
    # 3-pixel-wide slices), then the rules that need both.
    wrong = config.problems()
    if wrong:
        raise wrong[0]
    check_stack(image, field="image")
    check_labels(labels, field="labels")
    config = checked(config, store, np.shape(image), np.shape(labels), resume=resume)
    device = torch.device(rank.device)
    if device.type == "cpu":
        torch.set_num_threads(rank.threads(config.workers))
    continued = store.record(config.init_from) if config.init_from is not None and not resume else None
    if continued is not None:
        # A new version keeps the voxel size its parent's network was built for (given, or the parent's plan's
        # estimate), rather than estimating it again from this stack.
        config = config.replace(voxel_size=continued.voxel_size or config.voxel_size)
        if config.validate_every is None:
            config = config.replace(validate_every=version_interval(config, step_seconds_logged(store, continued.name)))
    # Every field left empty is chosen now, once, from the data and this machine (rank 0 plans for all).
    config, plan = plan_job(config, image, labels, store=store, resume=resume, device=device,
                            threads=rank.threads(config.workers), rank=rank)
    previous_state, previous_meta, parent = None, None, None
    if resume:
        record = store.record(config.name)
        previous_meta = {"classes": record.classes, "normalisation": record.normalisation,
                         "postprocess": record.postprocess, "kept_block": record.kept_block,
                         "statistics": record.statistics, "resumed": True}
        previous_state = store.load_checkpoint(record, "last")
    elif continued is not None:
        # A new version: the parent's weights, intensity scale and classes, so what it learned carries over and
        # its outputs keep their meaning; optimiser and schedule start afresh for the new labels.
        parent = continued
        previous_meta = {"classes": parent.classes, "normalisation": parent.normalisation,
                         "postprocess": parent.postprocess, "kept_block": parent.kept_block,
                         "statistics": parent.statistics}
    if len(extra_pairs) != len(config.extra_images):
        raise ConfigError("extra_images", f"{len(config.extra_images)} extra pair(s) named but "
                                          f"{len(extra_pairs)} given")
    material = prepare(config, image, labels, previous=previous_meta, extra_pairs=extra_pairs,
                       auto_labels=auto_labels, reviewed=reviewed, rehearsal=_rehearsal(config, store))

    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also copies rank 0's)
    out_channels = 2 if config.mode == "instance" else len(material.classes)
    if parent is not None:
        model = UNet.from_spec(parent.network).to(device)
        model.load_state_dict(store.load_checkpoint(parent, "best")["model"])
    else:
        model = UNet(in_channels=1, out_channels=out_channels, **network_for(config, np.shape(image))).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    start = 0
    if previous_state is not None:
        model.load_state_dict(previous_state["model"])
        optimizer.load_state_dict(previous_state["optimizer"])
        start = int(previous_state["iteration"])
    net = _data_parallel(model, rank)
    # bf16 autocast where the hardware runs it natively and a probe saw it work here, fp32 elsewhere; rank 0
    # decides for every rank (one probe, one format for the whole job), before anything is written.
    verdict = (choose_precision(config.precision, device, Probe(model.spec, material.window, config.batch_size,
                                                                config.mode))
               if rank.is_main else None)
    verdict = usable(gather(rank, verdict)[0])
    precision = verdict.precision
    folder, writer, best_score, best_tiebreak = store.folder(config.name), None, None, None
    smoothed, best_smoothed = None, None
    if rank.is_main:
        writer = ModelWriter(store, config, resume=resume)
        writer.describe(network=model.spec, normalisation=material.normalisation.to_dict(),
                        classes=material.classes, window=list(material.window),
                        validation_region=[list(r) for r in material.val_region], mode=config.mode,
                        dims=config.dims, voxel_size=list(config.voxel_size), postprocess=material.postprocess,
                        kept_block=material.holdout.kept_block, validation=material.holdout.describe(),
                        statistics=material.statistics)
        if parent is not None:
            writer.describe(parent=parent.name, lineage=[*parent.lineage, parent.name],
                            parent_iterations=parent.iterations_done, parent_best_score=parent.best_score)
        writer.describe(runs=[*writer.meta.get("runs", []), _run_record(config, rank, start)],
                        precision=verdict.to_dict())
        if plan is not None:
            writer.describe(plan=plan.to_dict())
        if not resume:
            _keep_first_data(store, config, parent, material, labels)
        best_score, best_tiebreak = writer.meta.get("best_score"), writer.meta.get("best_tiebreak")
        smoothed, best_smoothed = writer.meta.get("score_smoothed"), writer.meta.get("best_smoothed")

    # A resumed job draws new windows, not the same ones; on a GPU, worker processes keep batches ready.
    processes = config.data_processes(device.type)
    batches = window_batches(material.pool(), config.batch_size, (config.seed, start), processes,
                             pin_memory=device.type == "cuda", first_stream=_first_stream(rank, processes))
    autocast = autocast_for(precision, device)
    forward = net
    batch_hint = None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick its fastest kernels once
        batch_hint = suggest_batch_size(model, material.window, device, autocast)
        if config.compile:
            forward = torch.compile(net)  # optional: minutes of compiling first, then faster steps
    return Run(config=config, material=material, model=model, net=net, forward=forward, optimizer=optimizer,
               writer=writer, folder=folder, start=start, best_score=best_score, batches=batches, device=device,
               verdict=verdict, autocast=autocast, batch_hint=batch_hint, plan=plan, paced_validation=paced,
               best_tiebreak=best_tiebreak, smoothed=smoothed, best_smoothed=best_smoothed,
               before_given=parent_scores(parent, material.holdout, verdict, device))


def plan_job(config: TrainConfig, image: np.ndarray, labels: np.ndarray, *, store: ModelStore, resume: bool,
             device: torch.device, threads: int, rank: Rank | None = None) -> tuple[TrainConfig, Plan | None]:
    """The job with every field left empty chosen (planning.plan), and the plan; a resumed job keeps the choices
    it was trained with. In a job of several processes rank 0 plans and the others take its plan."""
    if resume:
        trained = store.record(config.name).config
        config = config.replace(**{name: getattr(trained, name) for name in auto_fields(config)})
    if not auto_fields(config):
        return config, None
    plan = None
    if rank is None or rank.is_main:
        stack = np.asarray(image)
        truth = np.asarray(labels)
        known = painted(config, truth[np.newaxis] if truth.ndim == 2 else truth)[1]
        # Every candidate the plan may time is probed first, together (a crash there costs a child process, and a
        # format can crash on one window and run another); they are then timed in the format that ran them all.
        first = make_plan(config, stack, truth, device=device, precision="fp32", threads=threads, known=known,
                          measure=False)
        verdict = usable(choose_precision(config.precision, device, timed_steps(config, first)))
        plan = make_plan(config, stack, truth, device=device, precision=verdict.precision, threads=threads,
                         known=known, prints=first.fingerprint)
    if rank is not None:
        plan = gather(rank, plan)[0]
    return plan.apply(config), plan


def _rehearsal(config: TrainConfig, store: ModelStore) -> Rehearsal | None:
    """The lineage's first data a continued (or resumed) version practises, where it asks to and there is some
    its window fits (a parent from before rehearsal files, or a window changed by hand, goes without)."""
    if not config.rehearse or config.init_from is None or not store.exists(str(config.init_from)):
        return None
    kept = read_rehearsal(store.folder(str(config.init_from)))
    window = window3(tuple(config.window or ()))
    if kept is None or not kept.labels.any() or len(window) != 3 or any(
            w > s for w, s in zip(window, kept.stack.shape)):
        return None
    return kept


def _keep_first_data(store: ModelStore, config: TrainConfig, parent: ModelRecord | None, material: Material,
                     labels: np.ndarray) -> None:
    """A new model keeps a crop of its first pair around its validation block, a version its parent's
    (rehearsal.py). A first model validated otherwise (touched-only: held-out corrections) keeps nothing."""
    folder = store.folder(config.name)
    if parent is not None:
        copy_rehearsal(parent.folder, folder)
        return
    block = material.holdout.kept_block if material.holdout is not None else None
    if block is None or tuple(block["shape"]) != tuple(material.stack.shape) or config.touched_only:
        return
    region = tuple((int(a), int(b)) for a, b in block["region"])
    write_rehearsal(folder, material.stack, as_stack(labels, field="labels"), region, window3(material.window))


def _first_stream(rank: Rank, processes: int) -> int | None:
    """The number of a rank's first window stream (None: a lone process, the loader's own numbering).

    In a job of several ranks, streams are numbered from 1 across every drawer of windows, each rank's window
    processes or, without them, its training thread; so each rank draws its own windows, and two ranks with
    a batch each draw exactly what one process draws with two window processes and iteration step 2.
    """
    if not rank.distributed:
        return None
    return 1 + rank.rank * max(processes, 1)


def _data_parallel(model: torch.nn.Module, rank: Rank) -> torch.nn.Module:
    """DDP copies rank 0's weights to the others and averages gradients during backward; ``model`` itself stays
    the unwrapped network that validation, previews and checkpoints use."""
    if not rank.distributed:
        return model
    device = torch.device(rank.device)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _run_record(config: TrainConfig, rank: Rank, start: int) -> dict:
    """How one job (or one resumption) trained, for model.json: the learning rate is not scaled with the number
    of processes (AdamW steps on averaged gradients), the effective batch grows with it."""
    return {"from_iteration": start, "world_size": rank.world_size, "device": torch.device(rank.device).type,
            "batch_size": config.batch_size, "iteration_step": config.iteration_step,
            "effective_batch_size": config.batch_size * config.iteration_step * rank.world_size, "lr": config.lr}
