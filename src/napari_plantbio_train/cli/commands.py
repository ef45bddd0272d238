"""The command line's commands: each reads its options into the engine's values, runs the engine and says
what happened; bad input raises ``ConfigError``, which ``main`` prints as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..inference.label import LabelSettings
from ..io import wire
from ..job import faults
from ..io.stacks import read, read_array
from ..job.config import DATA_FIELDS, ConfigError, TrainConfig, is_unsaved_layer, read_job_document
from ..io.checks import check_stack
from ..io.files import DiskFull
from ..job.events import (Finished, LabelFinished, LabelProgress, LabelStarted, Progress, StacksProgress, Started,
                          StackStarted)
from ..models.lock import ensure_free
from ..models.store import ModelError, ModelStore
from ..runtime.hardware import job_device, processes_per_machine
from ..training import distributed
from ..training.distributed import DistributedError
from .parser import FIELD_OPTIONS, POSTPROCESS_OPTIONS
from .progress import JsonLines, ProgressLine, _duration, _error_event, _line, _reporter


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return job_from_args(args)[0]


def job_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """The job the options describe, and where its data is read from (its own data fields, unless a job file
    says otherwise)."""
    given = {field: getattr(args, option) for option, field in FIELD_OPTIONS.items()
             if getattr(args, option) is not None}
    given.update(_pairs(args))
    if "voxel_size" in given:
        given["voxel_size"] = tuple(given["voxel_size"])
    if args.config:
        try:
            document = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError("config", f"{args.config}: {exc}") from None
        config, data = read_job_document(document)
        config = config.replace(**given)
        data.update({k: v for k, v in given.items() if k in DATA_FIELDS})
        return config, data
    if not args.name:
        raise ConfigError("name", "--name is required (or a job file with --config)")
    config = _config_from_options(args, given)
    return config, {k: getattr(config, k) for k in DATA_FIELDS}


def _config_from_options(args: argparse.Namespace, given: dict[str, Any]) -> TrainConfig:
    if args.resume:
        record = ModelStore(args.models_dir).record(args.name)
        return record.config.replace(**given)
    if args.init_from:
        from ..training.material import continuation

        parent = ModelStore(args.models_dir).record(args.init_from)
        for required in ("image", "labels"):
            if required not in given:
                raise ConfigError(required, f"--{required} (the corrected data) is required with --init-from")
        start = continuation(parent, args.name)
        given.pop("voxel_size", None)
        return start.replace(**given)
    for required in ("image", "labels", "mode", "dims"):
        if required not in given:
            raise ConfigError(required, f"--{required} is required for a new model")
    return TrainConfig(**given)


def _pairs(args: argparse.Namespace) -> dict[str, Any]:
    """--image/--labels given n times -> the first pair plus extra_images/extra_labels; --balance, --touched-only."""
    images, labels = args.image or [], args.labels or []
    if len(images) != len(labels) and images and labels:
        raise ConfigError("labels", f"{len(images)} --image but {len(labels)} --labels: give one labels stack "
                                    "per image, in the same order")
    fields: dict[str, Any] = {}
    if images:
        fields["image"], fields["extra_images"] = images[0], tuple(images[1:])
    if labels:
        fields["labels"], fields["extra_labels"] = labels[0], tuple(labels[1:])
    if args.balance is not None:
        fields["pair_weights"] = tuple(args.balance)
    if args.touched_only is not None:
        fields["touched_only"], fields["auto_labels"] = True, args.touched_only
    if args.reviewed is not None:
        fields["reviewed"] = args.reviewed
    return fields


def _read_pair(image: str, labels: str, image_field: str, labels_field: str) -> tuple[np.ndarray, np.ndarray]:
    return _read(image, image_field), _read(labels, labels_field)


def _read(path: str | None, field: str) -> np.ndarray:
    if not path:
        raise ConfigError(field, "a file path is needed")
    if is_unsaved_layer(path):
        raise ConfigError(field, f"the job was trained on a {path}: save that layer (File > Save Selected Layers) "
                                 f"and give its path (--{field.replace('_', '-')} FILE)")
    try:
        return read_array(path)
    except (OSError, ValueError) as exc:  # StackError is a ValueError
        raise ConfigError(field, str(exc)) from None


def _run_train(args: argparse.Namespace, out: TextIO) -> int:
    config, data = job_from_args(args)
    for field in ("image", "labels"):
        if not data.get(field):
            raise ConfigError(field, "a file path is needed")
    if config.voxel_size is None and not args.resume:  # not given: the file's own, where it says one
        said = _file_voxel_size(data["image"])
        if said is not None:
            config = config.replace(voxel_size=said)
    if args.plan:
        return _print_plan(config, data, args, out)
    job = {"config": config.to_dict(), "data": data, "models_dir": args.models_dir, "resume": args.resume,
           "events": args.events, "quiet": args.quiet}
    processes, joined = processes_per_machine(config), distributed.environment()
    if (joined is not None and int(joined["WORLD_SIZE"]) > 1) or (processes == 1 and args.nodes == 1):
        return train_rank(job, out)  # one process of a torchrun / srun job, or a job of one process
    _check_before_launch(config, data, args)
    statuses = distributed.launch(_launched_rank, (job,), processes=processes, nodes=args.nodes,
                                  node_rank=args.node_rank, master_addr=args.master_addr,
                                  master_port=args.master_port, run_id=f"plantbio-{config.name}")
    return max((int(s) for s in statuses.values() if isinstance(s, int)), default=0)


def _file_voxel_size(path: str) -> tuple[float, float, float] | None:
    try:
        return read(path).voxel_size
    except (OSError, ValueError):
        return None  # reading it properly, with a one-line error, comes later


def _print_plan(config: TrainConfig, data: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    """``train --plan``: what the job would train with, and why, without training (seconds)."""
    import torch

    from ..training.material import checked
    from ..training.setup import plan_job

    image, labels = _read(data["image"], "image"), _read(data["labels"], "labels")
    store = ModelStore(args.models_dir)
    config = checked(config, store, image.shape, labels.shape, resume=args.resume)
    device = torch.device(job_device(config))
    resolved, plan = plan_job(config, image, labels, store=store, resume=args.resume, device=device,
                              threads=config.workers)
    if plan is None:
        print("every field is given: nothing to plan", file=out)
        return 0
    for line in plan.lines():
        print(line, file=out)
    print(json.dumps({name: plan.values[name] for name in plan.auto}), file=out)
    return 0


def train_rank(job: dict[str, Any], out: TextIO | None = None) -> int:
    """One process's share of a training job: join the job (if there is one), read the data, train; rank 0
    reports. ``job`` holds plain values only (the config as a dict, where to read its data, models_dir, resume,
    events, quiet), so it travels to spawned processes; each process reads the arrays itself.

    Returns the exit status: 0 for a job that completed (or met its time limit, or a STOP file), 128 + N for one
    that signal N stopped (143: SIGTERM), so a cluster script can tell a finished job from one to resume."""
    from ..training.loop import train

    config, out = TrainConfig.from_dict(job["config"]), out or sys.stdout
    stop = threading.Event()
    with _signals_set(stop) as received, distributed.process_group(job_device(config)) as rank:
        image, labels, extra, auto_labels, reviewed = _read_data(config, job["data"])
        # Rank 0 alone polls the STOP file: the ranks agree on stopping anyway, and only it may delete the file,
        # once it owns the folder (its Started event): before that the file may be another running job's.
        stop_path = wire.stop_file(ModelStore(job["models_dir"]).folder(config.name)) if rank.is_main else None
        owned = completed = False

        def stopping() -> bool:
            return stop.is_set() or (owned and stop_path.exists())

        report = _reporter(job, config, rank, out)
        try:
            events = train(config, image, labels, extra_pairs=extra, auto_labels=auto_labels, reviewed=reviewed,
                           models_dir=job["models_dir"], resume=job["resume"], stop=stopping, rank=rank)
            while True:
                try:
                    event = next(events)
                except StopIteration:
                    return stopped_status(received) if not completed else 0
                completed = completed or (isinstance(event, Finished) and event.reason != "stopped")
                if isinstance(event, Started) and stop_path is not None:
                    stop_path.unlink(missing_ok=True)  # left by an earlier job: not a request to this one
                    owned = True
                report(event)
                if isinstance(event, Progress):
                    faults.at_iteration(event.iteration)  # the tests' crashes on purpose; nothing otherwise
        finally:
            if owned:
                stop_path.unlink(missing_ok=True)


def _launched_rank(job: dict[str, Any]) -> int:
    """A launched process: bad input ends it with one line and status 2 (a full disk: 1), and the launcher then
    ends the job; otherwise its exit status (``train_rank``)."""
    from ..runtime.hardware import fresh_process

    fresh_process()  # a spawned interpreter: nothing has computed in it yet
    try:
        return train_rank(job)
    except (ConfigError, ModelError, DistributedError, FileNotFoundError, FileExistsError, DiskFull) as exc:
        rank = (distributed.environment() or {}).get("RANK", "0")
        sys.stderr.write(f"error: {'' if rank == '0' else f'rank {rank}: '}{exc}\n")  # one write: no interleaving
        sys.stderr.flush()
        if rank == "0" and job["events"] == "jsonl":  # the follower learns which field, before the launcher's line
            _error_event(sys.stdout, str(exc), getattr(exc, "field", None))
        sys.exit(1 if isinstance(exc, DiskFull) else 2)


def _read_data(config: TrainConfig, data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                                    list[tuple[np.ndarray, np.ndarray]],
                                                                    np.ndarray | None, np.ndarray | None]:
    image, labels = _read_pair(data["image"], data["labels"], "image", "labels")
    extra = [_read_pair(i, lab, "extra_images", "extra_labels")
             for i, lab in zip(data.get("extra_images") or (), data.get("extra_labels") or ())]
    auto_labels = None
    reviewed = None
    if config.touched_only and data.get("auto_labels"):
        auto_labels = _read(data["auto_labels"], "auto_labels")
        if data.get("reviewed"):
            reviewed = _read(data["reviewed"], "reviewed")
    return image, labels, extra, auto_labels, reviewed


def _check_before_launch(config: TrainConfig, data: dict[str, Any], args: argparse.Namespace) -> None:
    """Bad input is one line before any process starts, not one line per process after they all started."""
    from ..training.material import checked

    shapes = {}
    for field in ("image", "labels"):
        try:
            stack = read(data[field]).data
        except (OSError, ValueError) as exc:
            raise ConfigError(field, str(exc)) from None
        check_stack(stack, field=field)
        shapes[field] = tuple(stack.shape)
    store = ModelStore(args.models_dir)
    ensure_free(store.root, config.name)  # rank 0 takes the lock itself; a busy folder is one line before launching
    checked(config, store, shapes["image"], shapes["labels"], resume=args.resume)


@contextlib.contextmanager
def _signals_set(stop: threading.Event) -> Iterator[list[int]]:
    """Ctrl-C or a cluster's SIGTERM ends the job at the next iteration with a checkpoint to resume from; yields
    the signals received, for the exit status (``stopped_status``)."""
    received: list[int] = []

    def handle(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stopped_status(received: list[int]) -> int:
    """The shell's convention for a process a signal ended, 128 + its number, kept for a job that the signal
    stopped cleanly (checkpoint written, events finished): 143 after SIGTERM, 130 after SIGINT; 0 without one."""
    return 128 + received[0] if received else 0


def _run_predict(args: argparse.Namespace, out: TextIO) -> int:
    """One stack (``--output``) or many (``--output-dir``), every argument checked before any work."""
    from ..inference.label import label_stack
    from ..inference.many import expand_inputs, label_stacks, plan_stacks

    images = expand_inputs(args.image)
    _check_predict_targets(args, len(images))
    _check_queue_targets(args)
    near = _near_regions(args)
    settings, stop = _label_settings(args), threading.Event()
    image = None
    kept: dict[str, Any] = {}
    events: Iterator[Any]  # a generator: nothing runs before the loop below
    if args.output_dir:
        jobs = plan_stacks(args.model, images, args.output_dir, models_dir=args.models_dir, settings=settings,
                           overwrite=args.overwrite, suffix=f".{args.format}")
        events = label_stacks(args.model, jobs, models_dir=args.models_dir, settings=settings,
                              overwrite=args.overwrite, stop=stop)
    else:
        try:
            image = read(images[0]).data
        except (OSError, ValueError) as exc:
            raise ConfigError("image", str(exc)) from None
        # The queue ranks by doubt among other signs: without a file for the uncertainty it is kept in memory.
        uncertainty = args.uncertainty or (True if args.queue else None)
        events = _keeping_result(label_stack(args.model, image, models_dir=args.models_dir, output=args.output,
                                             probabilities=args.probabilities, uncertainty=uncertainty,
                                             settings=settings, overwrite=args.overwrite, stop=stop,
                                             near=near, far=args.far), kept)
    bar = None if args.quiet or args.events == "jsonl" else ProgressLine(out)
    report = JsonLines(out) if args.events == "jsonl" else None
    stacks = len(images) if args.output_dir else 0
    with _signals_set(stop) as received:
        for event in events:
            if report is not None:
                report(event)
            else:
                _print_label_event(event, args, bar, out, stacks)
            if isinstance(event, LabelFinished) and event.cancelled:
                return stopped_status(received) or 130
    if stacks:
        _line(bar, out, f"labelled {stacks} stack(s) into {args.output_dir}")
    if args.queue:
        _write_queue(args, kept["result"], image)
    if args.cores:
        from ..io.files import atomic_write_json

        atomic_write_json(Path(args.cores), [[list(axis) for axis in core] for core in kept["result"].cores or ()])
    return 0


def _near_regions(args: argparse.Namespace) -> list[tuple[tuple[int, int], ...]] | None:
    """The regions of ``--near`` as ``label_stack`` takes them, checked before any work."""
    if args.far and not args.near:
        raise ConfigError("far", "--far labels the blocks away from the --near regions: give --near too")
    if args.output_dir and (args.near or args.cores):
        raise ConfigError("near" if args.near else "cores", "--near and --cores are for a single --image with "
                                                            "--output")
    if args.cores and Path(args.cores).suffix.lower() != ".json":
        raise ConfigError("cores", f"{Path(args.cores).name}: write it as .json")
    if not args.near:
        return None
    try:
        regions = json.loads(Path(args.near).read_text())
        near = [tuple((int(a), int(b)) for a, b in region) for region in regions]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("near", f"{args.near}: not a JSON list of [[z0, z1], [y0, y1], [x0, x1]] regions "
                                  f"({exc})") from None
    if any(len(region) != 3 or any(a >= b for a, b in region) for region in near):
        raise ConfigError("near", f"{args.near}: each region is [[z0, z1], [y0, y1], [x0, x1]] with start < stop")
    return near


def _check_predict_targets(args: argparse.Namespace, stacks: int) -> None:
    if args.output and args.output_dir:
        raise ConfigError("output_dir", "give --output (one stack) or --output-dir (any number of stacks), not both")
    if not args.output and not args.output_dir:
        raise ConfigError("output", "give --output O.tif for one stack, or --output-dir DIR for results named "
                                    "after their inputs")
    if args.output and stacks > 1:
        raise ConfigError("output", f"{stacks} stacks to label: give --output-dir DIR, where each result is named "
                                    "after its input")
    for field in ("probabilities", "uncertainty", "queue"):
        if args.output_dir and getattr(args, field):
            raise ConfigError(field, f"--{field} is written for a single --image with --output")


def _label_settings(args: argparse.Namespace) -> LabelSettings:
    postprocess = {name: getattr(args, name) for name in POSTPROCESS_OPTIONS if getattr(args, name) is not None}
    return LabelSettings(overlap=args.overlap, tta=args.tta, batch_size=args.batch_size, precision=args.precision,
                         device=args.device, which=args.checkpoint, postprocess=postprocess,
                         block_voxels=args.block_voxels, workers=args.workers, scheduler=args.scheduler)


def _print_label_event(event: Any, args: argparse.Namespace, bar: ProgressLine | None, out: TextIO,
                       stacks: int) -> None:
    """Text progress: a line per stack started and finished, the bar for windows (and stacks, for many)."""
    if isinstance(event, StackStarted):
        _line(bar, out, f"stack {event.index + 1}/{event.stacks}: {event.source} -> {event.output}")
    elif isinstance(event, LabelStarted):
        print(f"labelling {tuple(event.shape)} with {args.model!r} on {event.device} ({event.precision}): "
              f"{event.blocks} block(s), {event.windows} windows", file=out, flush=True)
    elif isinstance(event, StacksProgress) and bar:
        bar.draw(round(1000 * event.overall_done), 1000, f"of the job, stack {event.index + 1}/{event.stacks} "
                                                        f"{100 * event.stack_done:.0f}%")
    elif isinstance(event, LabelProgress) and bar and not stacks:
        bar.draw(event.windows_done, event.windows, f"windows, {event.blocks_done}/{event.blocks} blocks"
                 + (", joining objects" if event.stage == "join" else ""))
    elif isinstance(event, LabelFinished):
        objects = "" if event.objects is None else f", {event.objects} objects"
        written = "the stack" if stacks else args.output
        status = "cancelled, nothing written" if event.cancelled else f"wrote {written}"
        _line(bar, out, f"{status} in {_duration(event.seconds)}{objects}")


def _keeping_result(events: Any, kept: dict[str, Any]) -> Iterator[Any]:
    """The events of a job's generator; what it returns is put into ``kept["result"]``."""
    kept["result"] = yield from events


def _check_queue_targets(args: argparse.Namespace) -> None:
    """The queue's files are checked with the other outputs, before any work."""
    for option, suffixes in (("queue", (".json",)), ("novelty", (".npy", ".tif", ".tiff"))):
        path = getattr(args, option)
        if path is None:
            continue
        if option == "novelty" and not args.queue:
            raise ConfigError("novelty", "the new-tissue map comes with the queue: give --queue too")
        if Path(path).suffix.lower() not in suffixes:
            raise ConfigError(option, f"{Path(path).name}: write it as {' or '.join(suffixes)}")
        if Path(path).exists() and not args.overwrite:
            raise ConfigError(option, f"{path} exists; give --overwrite to replace it")


def _write_queue(args: argparse.Namespace, result: Any, image: Any) -> None:
    from ..inference.proofreading import queue_document, with_queue
    from ..io.files import atomic_write, atomic_write_json

    result = with_queue(result, image)
    if result.queue is None:
        raise ConfigError("queue", f"model {args.model!r} is a {result.record.config.mode} model: the queue ranks "
                                   "objects of an instance model")
    atomic_write_json(Path(args.queue), queue_document(result))
    if args.novelty and result.novelty is not None:
        path = Path(args.novelty)
        if path.suffix.lower() == ".npy":
            atomic_write(path, lambda handle: np.save(handle, result.novelty, allow_pickle=False))
        else:
            import tifffile

            atomic_write(path, lambda handle: tifffile.imwrite(handle, result.novelty))


def _run_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    """One pair: a JSON object on stdout (and metric,value CSV). Several pairs: a JSON object per line, each
    naming its files, and a CSV with a row per pair. Every pair is read and checked before any is scored."""
    from ..evaluation.evaluate import (evaluate, mode_warning, object_statistics, write_object_statistics_csv,
                                       write_scores_csv, write_scores_rows_csv)

    pairs = list(zip(args.prediction, args.truth))
    if len(args.prediction) != len(args.truth):
        raise ConfigError("truth", f"{len(args.prediction)} --prediction and {len(args.truth)} --truth: give one "
                                   "truth per prediction, in the same order")
    if args.objects and len(pairs) > 1:
        raise ConfigError("objects", "per-object statistics are written for a single --prediction")
    arrays = [{field: _read(path, field) for field, path in zip(("prediction", "truth"), pair)}
              for pair in pairs]
    rows = []
    for (prediction, truth), pair in zip(pairs, arrays):
        try:
            scores = evaluate(pair["prediction"], pair["truth"], args.mode, per_slice=args.per_slice)
        except ValueError as exc:
            raise ConfigError("prediction", f"{prediction}: {exc}" if len(pairs) > 1 else str(exc)) from None
        warning = mode_warning(pair["truth"], args.mode)
        if warning:
            print(f"warning: {truth}: {warning}", file=sys.stderr, flush=True)  # stdout stays JSON
        rows.append(scores)
    if len(pairs) == 1:
        if args.csv:
            write_scores_csv(rows[0], args.csv)
        if args.objects:
            write_object_statistics_csv(object_statistics(arrays[0]["prediction"], tuple(args.voxel_size)),
                                        args.objects)
        print(json.dumps(_json_scores(rows[0])), file=out)
        return 0
    named = [{"prediction": p, "truth": t, **scores} for (p, t), scores in zip(pairs, rows)]
    if args.csv:
        write_scores_rows_csv(named, args.csv)
    for row in named:
        print(json.dumps(_json_scores(row)), file=out)
    return 0


def _json_scores(scores: dict[str, Any]) -> dict[str, Any]:
    """NaN (a score with nothing to score) is not JSON: it is written as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()}


def _run_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..models.exchange import export_model

    try:
        path = export_model(ModelStore(args.models_dir), args.model, args.output)
    except (OSError, ValueError) as exc:  # an unwritable output, a name that is not a .zip
        raise ModelError(str(exc)) from None
    print(f"exported {args.model!r} to {path}", file=out)
    return 0


def _run_import(args: argparse.Namespace, out: TextIO) -> int:
    from ..models.exchange import import_model

    store = ModelStore(args.models_dir)
    try:
        name = import_model(store, args.path, name=args.name)
    except OSError as exc:
        raise ModelError(str(exc)) from None
    print(f"imported {args.path} as {name!r} into {store.root}", file=out)
    return 0


def _run_models(args: argparse.Namespace, out: TextIO) -> int:
    store = ModelStore(args.models_dir)
    records = store.records()
    rows: list[dict[str, Any]] = [{
        "name": r.name, "mode": r.config.mode, "dims": r.config.dims, "iterations": r.iterations_done,
        "best_score": r.best_score, "score": r.score_name, "voxel_size": list(r.config.voxel_size),
        "parent": r.parent, "lineage": list(r.lineage),
    } for r in records]
    others = store.others()
    if args.json:
        for row in rows:
            print(json.dumps(row), file=out)
        for state in others:
            print(json.dumps({"name": state.name, "state": state.kind, "why": state.why, "advice": state.advice}),
                  file=out)
        return 0
    if not rows and not others:
        print(f"no models in {store.root}", file=out)
        return 0
    if rows:
        print(f"{'name':<28} {'mode':<9} {'dims':<4} {'iterations':>10}  best validation score", file=out)
    for row in rows:
        score = "-" if row["best_score"] is None else f"{row['best_score']:.4f} ({row['score']})"
        origin = f"  continued from {row['parent']}" if row["parent"] else ""
        print(f"{row['name']:<28} {row['mode']:<9} {row['dims']:<4} {row['iterations']:>10}  {score}{origin}",
              file=out)
    for state in others:  # never hidden: a folder a job died in is the user's to resume or remove
        print(f"{state.name}: {state.why}; {state.advice}", file=out)
    return 0
