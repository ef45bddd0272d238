"""Headless front end: the same engine and model folders as the dock widget, for clusters and scripts.

Option names are a promise to scripts: keep them. A bad value ends the program with one line naming the
field (exit status 2), never a traceback.

``train`` runs in this process, or, for ``--gpus N`` (N > 1), ``--cpu-processes N`` (N > 1) or ``--nodes K``
(K > 1), as that many data-parallel processes started by PyTorch's launcher (see distributed.py, which also
describes ``--events jsonl`` and the STOP file for programs that follow a job). Started by ``torchrun`` or
``srun``, it is one process of their job and joins it directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import distributed
from .config import DATA_FIELDS, ConfigError, TrainConfig, is_unsaved_layer, read_job_document
from .distributed import DistributedError, Rank, RankFailed
from .events import (CheckpointSaved, Finished, LabelFinished, LabelProgress, LabelStarted, Progress, Started,
                     Validation)
from .hardware import job_device, processes_per_machine
from .kinds import DIMS, MODES, PRECISIONS
from .label import LabelSettings
from .stacks import read, read_array
from .store import ModelError, ModelStore

# option -> TrainConfig field, for every option that maps one-to-one (the pairs are read by _pairs)
FIELD_OPTIONS = {
    "mode": "mode", "dims": "dims", "name": "name",
    "voxel_size": "voxel_size", "window": "window", "gpus": "gpus", "workers": "workers", "lr": "lr",
    "iteration_step": "iteration_step", "iteration_save": "iteration_save", "iterations": "iterations",
    "batch_size": "batch_size", "time_limit": "time_limit_min", "validate_every": "validate_every",
    "log_every": "log_every", "val_fraction": "val_fraction", "base_channels": "base_channels",
    "depth": "depth", "stem_stride": "stem_stride", "contour_width": "contour_width", "seed": "seed",
    "precision": "precision", "painted_slices_only": "painted_slices_only", "ignore_value": "ignore_value",
    "touched_margin": "touched_margin", "data_workers": "data_workers",
    "compile": "compile", "cpu_processes": "cpu_processes",
}


def _window(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window {text!r} must be sizes like 8,256,256 or 256,256") from None
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"window {text!r} must have 2 (Y,X) or 3 (Z,Y,X) sizes")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-plantbio-train",
                                     description="Train and manage segmentation models for EM stacks.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a named model (or resume one)")
    # Every default is None: "not given", so --resume can keep the stored job's values.
    add = train.add_argument
    add("--image", action="append", help="raw image stack (TIFF, a folder of TIFF slices, HDF5, zarr or .npy); give it again for more pairs")
    add("--labels", action="append",
        help="label stack of the same shape (integer ids or classes); one per --image, in the same order")
    add("--balance", nargs="+", type=float, metavar="W",
        help="share of training windows from each image/labels pair, in order (default: equal)")
    add("--touched-only", metavar="AUTO_LABELS",
        help="trust only the regions of the first --labels that differ from this auto-label result (the one "
             "they were corrected from), plus --touched-margin pixels around them; the rest is ignored")
    add("--touched-margin", type=int, help="pixels of context around each correction (default 16)")
    add("--mode", choices=MODES, help="semantic (classes) or instance (touching objects apart)")
    add("--dims", choices=DIMS, help="2d: every slice on its own; 3d: the stack is one volume")
    add("--name", help="unique model name (a safe folder name); required unless --config gives it")
    add("--config", metavar="JOB.json",
        help="a job file: a model folder's config.json (re-run a job, e.g. one the dock started) or a job the dock "
             "wrote; options given beside it change its fields")
    add("--voxel-size", nargs=3, type=float, metavar=("X", "Y", "Z"), help="nm per pixel along x, y, z")
    add("--window", type=_window, help="window size Z,Y,X (3d) or Y,X (2d)")
    add("--gpus", type=int, help="number of GPUs (0: CPU; default: 1 if CUDA is present); N > 1 trains on N GPUs "
                                 "at once, one process each (data-parallel)")
    add("--cpu-processes", type=int,
        help="on the CPU: data-parallel processes on this machine (default 1), e.g. for CPU clusters")
    add("--workers", type=int, help="CPU threads of this machine, shared by its processes")
    add("--data-workers", type=int,
        help="processes drawing training windows (default: --workers on a GPU, 0 on a CPU: the training thread)")
    add("--lr", type=float, help="base learning rate")
    add("--iteration-step", type=int, help="batches accumulated into one optimiser step")
    add("--iteration-save", type=int, help="checkpoint every N iterations")
    add("--iterations", type=int, help="iteration total")
    add("--batch-size", type=int, help="samples per batch")
    add("--time-limit", type=float, help="stop (with a checkpoint) after this many minutes")
    add("--validate-every", type=int, help="score the held-out block every N iterations")
    add("--log-every", type=int, help="write a metrics.csv row every N iterations")
    add("--val-fraction", type=float, help="share of the stack held out for validation")
    add("--base-channels", type=int, help="channels of the network's first level")
    add("--depth", type=int, help="downsampling steps of the network")
    add("--stem-stride", type=int, help="in-plane stride of the first layer (1, 2 or 4)")
    add("--contour-width", type=int, help="instance mode: width in pixels of the band between touching objects")
    add("--precision", choices=PRECISIONS,
        help="auto (default): bf16 where the hardware runs it natively and a probe saw it work, else fp32")
    add("--painted-slices-only", action="store_true", default=None,
        help="partial labels: slices without any label are unpainted (ignored), not background")
    add("--ignore-value", type=int, help="partial labels: this label value marks voxels to ignore")
    add("--compile", action="store_true", default=None, help="torch.compile the network (GPU: faster steps "
                                                              "after a slow start)")
    add("--seed", type=int)
    add("--models-dir", help="models folder (default: $PLANTBIO_MODELS_DIR or the user data folder)")
    add("--resume", action="store_true", help="continue the named model from its last checkpoint")
    add("--init-from", metavar="MODEL",
        help="continue from a named model as a new version (--name): its weights, normalisation and classes, "
             "a lower learning rate and a short schedule unless given")
    add("--quiet", action="store_true", help="no progress bar")
    add("--events", choices=("text", "jsonl"), default="text",
        help="jsonl: one JSON object per event on stdout, for a program following the job (see docs/cluster.md)")
    _add_machines(train)

    _add_predict(commands)
    _add_evaluate(commands)
    _add_exchange(commands)

    models = commands.add_parser("models", help="list named models")
    models.add_argument("--models-dir")
    models.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _add_machines(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group("several machines", "run the same command on every machine of the job, each "
                                     "with its --node-rank (a shared file system holds the data and models)")
    group.add_argument("--nodes", type=int, default=1, help="machines in the job (default 1)")
    group.add_argument("--node-rank", type=int, default=0, help="this machine's place in the job: 0 to nodes-1")
    group.add_argument("--master-addr", help="host name or address of machine 0 (needed with --nodes > 1)")
    group.add_argument("--master-port", type=int, help="a free port on machine 0 (needed with --nodes > 1)")


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser("predict", help="label a stack with a named model")
    add = predict.add_argument
    add("--model", required=True, help="name of the model (see `models`)")
    add("--image", required=True, help="stack to label (TIFF, a folder of TIFF slices, HDF5, zarr or .npy; read block by block)")
    add("--output", required=True, help="labels to write: O.tif or O.zarr")
    add("--overlap", type=float, default=0.5, help="share of a window overlapping its neighbour (default 0.5)")
    add("--tta", type=int, default=0, choices=(0, 4, 8), help="test-time variants averaged (default 0)")
    add("--batch-size", type=int, help="windows per forward pass (default: the model's samples per batch)")
    add("--models-dir", help="models folder (default: $PLANTBIO_MODELS_DIR or the user data folder)")
    add("--probabilities", help="also write the probability maps to this .zarr path")
    add("--uncertainty", help="also write a map of the model's doubt (0..1) to this .zarr or .tif path")
    add("--checkpoint", choices=("best", "last"), default="best", help="which weights to use (default best)")
    add("--precision", choices=PRECISIONS, default="auto",
        help="auto: bf16 where the hardware runs it natively and a probe saw it work, else fp32")
    add("--device", help="cpu, cuda or cuda:N (default: the first GPU if there is one)")
    for name in ("fg_threshold", "seed_threshold", "min_size", "min_seed_size", "seed_prominence"):
        add(f"--{name.replace('_', '-')}", type=float, help="instance post-processing (default: the model's)")
    add("--block-voxels", type=int, default=LabelSettings.block_voxels, help="largest block held in memory")
    add("--workers", type=int, default=1, help="blocks labelled at once on this machine")
    add("--scheduler", help="address of a dask.distributed scheduler to run the blocks on")
    add("--overwrite", action="store_true", help="replace an existing output")
    add("--quiet", action="store_true", help="no progress bar")


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="score a labels result against ground truth (JSON)")
    add = evaluate.add_argument
    add("--prediction", required=True, help="labels to judge (TIFF, a folder of TIFF slices, HDF5, zarr or .npy)")
    add("--truth", required=True, help="ground-truth labels of the same shape")
    add("--mode", choices=MODES, default="instance", help="instance (objects, default) or semantic (classes)")
    add("--per-slice", action="store_true", help="instance: match objects within each slice (2D models)")
    add("--csv", help="also write the scores as a metric,value CSV")
    add("--objects", help="also write per-object statistics of the prediction as CSV")
    add("--voxel-size", nargs=3, type=float, metavar=("X", "Y", "Z"), default=(1.0, 1.0, 1.0),
        help="nm per pixel along x, y, z, for the object statistics")


def _add_exchange(commands: Any) -> None:
    export = commands.add_parser("export", help="write a named model as a bioimage.io package (zip)")
    export.add_argument("--model", required=True, help="name of the model (see `models`)")
    export.add_argument("--output", required=True, help="package to write: FILE.zip")
    export.add_argument("--models-dir", help="models folder (default: $PLANTBIO_MODELS_DIR or the user data folder)")
    imported = commands.add_parser("import", help="add a model from a package exported by this plugin or a folder")
    imported.add_argument("path", help="FILE.zip exported by `export`, or a model folder")
    imported.add_argument("--models-dir", help="models folder (default: $PLANTBIO_MODELS_DIR or the user data folder)")
    imported.add_argument("--name", help="name for the imported model (default: its own)")


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
        from .material import continuation

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
    job = {"config": config.to_dict(), "data": data, "models_dir": args.models_dir, "resume": args.resume,
           "events": args.events, "quiet": args.quiet}
    processes, joined = processes_per_machine(config), distributed.environment()
    if (joined is not None and int(joined["WORLD_SIZE"]) > 1) or (processes == 1 and args.nodes == 1):
        train_rank(job, out)  # one process of a torchrun / srun job, or a job of one process
        return 0
    _check_before_launch(config, data, args)
    distributed.launch(_launched_rank, (job,), processes=processes, nodes=args.nodes, node_rank=args.node_rank,
                       master_addr=args.master_addr, master_port=args.master_port, run_id=f"plantbio-{config.name}")
    return 0


def train_rank(job: dict[str, Any], out: TextIO | None = None) -> str:
    """One process's share of a training job: join the job (if there is one), read the data, train; rank 0
    reports. ``job`` holds plain values only (the config as a dict, where to read its data, models_dir, resume,
    events, quiet), so it travels to spawned processes; each process reads the arrays itself."""
    from .train import train

    config, out = TrainConfig.from_dict(job["config"]), out or sys.stdout
    stop = threading.Event()
    with _signals_set(stop), distributed.process_group(job_device(config)) as rank:
        image, labels, extra, auto_labels = _read_data(config, job["data"])
        # Rank 0 alone polls the STOP file: the ranks agree on stopping anyway, and only it may delete the file.
        stop_path = distributed.stop_file(ModelStore(job["models_dir"]).folder(config.name)) if rank.is_main else None
        if stop_path is not None:
            stop_path.unlink(missing_ok=True)  # left by an earlier job: not a request to this one

        def stopping() -> bool:
            return stop.is_set() or (stop_path is not None and stop_path.exists())

        report = _reporter(job, config, rank, out)
        try:
            events = train(config, image, labels, extra_pairs=extra, auto_labels=auto_labels,
                           models_dir=job["models_dir"], resume=job["resume"], stop=stopping, rank=rank)
            while True:
                try:
                    report(next(events))
                except StopIteration as done:
                    return str(done.value)
        finally:
            if stop_path is not None:
                stop_path.unlink(missing_ok=True)


def _launched_rank(job: dict[str, Any]) -> str:
    """A launched process: bad input ends it with one line and status 2, and the launcher then ends the job."""
    from .hardware import fresh_process

    fresh_process()  # a spawned interpreter: nothing has computed in it yet
    try:
        return train_rank(job)
    except (ConfigError, ModelError, DistributedError, FileNotFoundError, FileExistsError) as exc:
        rank = (distributed.environment() or {}).get("RANK", "0")
        sys.stderr.write(f"error: {'' if rank == '0' else f'rank {rank}: '}{exc}\n")  # one write: no interleaving
        sys.stderr.flush()
        if rank == "0" and job["events"] == "jsonl":  # the follower learns which field, before the launcher's line
            _error_event(sys.stdout, str(exc), getattr(exc, "field", None))
        sys.exit(2)


def _read_data(config: TrainConfig, data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                                    list[tuple[np.ndarray, np.ndarray]],
                                                                    np.ndarray | None]:
    image, labels = _read_pair(data["image"], data["labels"], "image", "labels")
    extra = [_read_pair(i, lab, "extra_images", "extra_labels")
             for i, lab in zip(data.get("extra_images") or (), data.get("extra_labels") or ())]
    auto_labels = None
    if config.touched_only and data.get("auto_labels"):
        auto_labels = _read(data["auto_labels"], "auto_labels")
    return image, labels, extra, auto_labels


def _check_before_launch(config: TrainConfig, data: dict[str, Any], args: argparse.Namespace) -> None:
    """Bad input is one line before any process starts, not one line per process after they all started."""
    from .material import checked

    shapes = {}
    for field in ("image", "labels"):
        try:
            shapes[field] = tuple(read(data[field]).data.shape)
        except (OSError, ValueError) as exc:
            raise ConfigError(field, str(exc)) from None
    checked(config, ModelStore(args.models_dir), shapes["image"], shapes["labels"], resume=args.resume)


def _reporter(job: dict[str, Any], config: TrainConfig, rank: Rank, out: TextIO) -> Callable[[Any], None]:
    """What rank 0 does with each event: a progress bar and lines, or JSON lines; the other ranks say nothing."""
    if not rank.is_main:
        return lambda event: None
    if job["events"] == "jsonl":
        return JsonLines(out)
    bar = None if job["quiet"] else ProgressLine(out)

    def report(event: Any) -> None:
        _report(event, config, bar, out)
        if isinstance(event, Started) and rank.distributed:
            effective = config.batch_size * config.iteration_step * rank.world_size
            print(f"data-parallel over {rank.world_size} processes: effective batch {effective} (batch "
                  f"{config.batch_size} x iteration step {config.iteration_step} x {rank.world_size}), learning "
                  f"rate {config.lr:g}", file=out, flush=True)

    return report


class JsonLines:
    """``--events jsonl``: one JSON object per event; previews as .npy files in the model folder's previews/."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.previews = out, None

    def __call__(self, event: Any) -> None:
        if isinstance(event, Started):
            self.previews = event.model_dir / "previews"
        print(json.dumps(distributed.event_record(event, self.previews)), file=self.out, flush=True)


@contextlib.contextmanager
def _signals_set(stop: threading.Event):
    """Ctrl-C or a cluster's SIGTERM ends the job at the next iteration with a checkpoint to resume from."""
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report(event: Any, config: TrainConfig, bar: "ProgressLine | None", out: TextIO) -> None:
    if isinstance(event, Started):
        print(f"training {config.name!r} on {event.device} ({event.precision}) from iteration "
              f"{event.start_iteration} (window {event.window}); model folder {event.model_dir}", file=out, flush=True)
        if event.precision_reason:
            print(f"precision {event.precision_reason}", file=out, flush=True)
        if event.batch_hint is not None:
            print(f"the GPU's free memory holds about {event.batch_hint} windows per batch "
                  f"(samples per batch: {config.batch_size})", file=out, flush=True)
    elif isinstance(event, Progress) and bar:
        bar.update(event)
    elif isinstance(event, Validation):
        _line(bar, out, f"iteration {event.iteration}: validation score {event.score:.4f}"
                        + (" (best)" if event.is_best else ""))
    elif isinstance(event, CheckpointSaved) and event.reason != "best":
        _line(bar, out, f"checkpoint ({event.reason}) at iteration {event.iteration}: {event.path}")
    elif isinstance(event, Finished):
        _line(bar, out, f"finished ({event.reason}) at iteration {event.iteration}; best score "
                        f"{'-' if event.best_score is None else f'{event.best_score:.4f}'}")


def _line(bar: "ProgressLine | None", out: TextIO, text: str) -> None:
    if bar:
        bar.clear()
    print(text, file=out, flush=True)


class ProgressLine:
    """A one-line progress bar redrawn in place, at most a few times a second."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width, self.drawn_at, self.length = out, width, 0.0, 0

    def update(self, event: Progress) -> None:
        eta = "" if event.eta_seconds is None else f" ~{_duration(event.eta_seconds)} left"
        self.draw(event.iteration, event.total, f"loss {event.loss:.4f} lr {event.lr:.2e} "
                                                f"{event.seconds_per_iteration:.2f}s/it{eta}")

    def draw(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if now - self.drawn_at < 0.25 and done != total:
            return
        self.drawn_at = now
        filled = int(self.width * done / max(1, total))
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {text}"
        self.out.write("\r" + text.ljust(self.length))
        self.out.flush()
        self.length = len(text)

    def clear(self) -> None:
        if self.length:
            self.out.write("\r" + " " * self.length + "\r")
            self.length = 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _run_predict(args: argparse.Namespace, out: TextIO) -> int:
    from .label import label_stack

    try:
        image = read(args.image).data
    except (OSError, ValueError) as exc:
        raise ConfigError("image", str(exc)) from None
    postprocess = {name: getattr(args, name) for name in ("fg_threshold", "seed_threshold", "min_size",
                                                          "min_seed_size", "seed_prominence")
                   if getattr(args, name) is not None}
    settings = LabelSettings(overlap=args.overlap, tta=args.tta, batch_size=args.batch_size, precision=args.precision,
                             device=args.device, which=args.checkpoint, postprocess=postprocess,
                             block_voxels=args.block_voxels, workers=args.workers, scheduler=args.scheduler)
    stop = threading.Event()
    bar = None if args.quiet else ProgressLine(out)
    with _signals_set(stop):
        for event in label_stack(args.model, image, models_dir=args.models_dir, output=args.output,
                                 probabilities=args.probabilities, uncertainty=args.uncertainty,
                                 settings=settings, overwrite=args.overwrite,
                                 stop=stop):
            if isinstance(event, LabelStarted):
                print(f"labelling {tuple(event.shape)} with {args.model!r} on {event.device} ({event.precision}): "
                      f"{event.blocks} block(s), {event.windows} windows", file=out, flush=True)
            elif isinstance(event, LabelProgress) and bar:
                bar.draw(event.windows_done, event.windows, f"windows, {event.blocks_done}/{event.blocks} blocks"
                         + (", joining objects" if event.stage == "join" else ""))
            elif isinstance(event, LabelFinished):
                objects = "" if event.objects is None else f", {event.objects} objects"
                status = "cancelled, nothing written" if event.cancelled else f"wrote {args.output}"
                _line(bar, out, f"{status} in {_duration(event.seconds)}{objects}")
                if event.cancelled:
                    return 130
    return 0


def _run_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    from .evaluate import evaluate, object_statistics, write_object_statistics_csv, write_scores_csv

    arrays = {}
    for field in ("prediction", "truth"):
        try:
            arrays[field] = read_array(getattr(args, field))
        except (OSError, ValueError) as exc:
            raise ConfigError(field, str(exc)) from None
    try:
        scores = evaluate(arrays["prediction"], arrays["truth"], args.mode, per_slice=args.per_slice)
    except ValueError as exc:
        raise ConfigError("prediction", str(exc)) from None
    if args.csv:
        write_scores_csv(scores, args.csv)
    if args.objects:
        write_object_statistics_csv(object_statistics(arrays["prediction"], tuple(args.voxel_size)), args.objects)
    # NaN (a score with nothing to score) is not JSON: it is written as null.
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()}),
          file=out)
    return 0


def _run_export(args: argparse.Namespace, out: TextIO) -> int:
    from .exchange import export_model

    try:
        path = export_model(ModelStore(args.models_dir), args.model, args.output)
    except (OSError, ValueError) as exc:  # an unwritable output, a name that is not a .zip
        raise ModelError(str(exc)) from None
    print(f"exported {args.model!r} to {path}", file=out)
    return 0


def _run_import(args: argparse.Namespace, out: TextIO) -> int:
    from .exchange import import_model

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
    if args.json:
        for row in rows:
            print(json.dumps(row), file=out)
        return 0
    if not rows:
        print(f"no models in {store.root}", file=out)
        return 0
    print(f"{'name':<28} {'mode':<9} {'dims':<4} {'iterations':>10}  best validation score", file=out)
    for row in rows:
        score = "-" if row["best_score"] is None else f"{row['best_score']:.4f} ({row['score']})"
        origin = f"  continued from {row['parent']}" if row["parent"] else ""
        print(f"{row['name']:<28} {row['mode']:<9} {row['dims']:<4} {row['iterations']:>10}  {score}{origin}",
              file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    runners = {"train": _run_train, "predict": _run_predict, "evaluate": _run_evaluate, "models": _run_models,
               "export": _run_export, "import": _run_import}
    try:
        return runners[args.command](args, out)
    except (ConfigError, DistributedError) as exc:
        return _fail(args, out, str(exc), 2, exc.field)
    except (ModelError, FileNotFoundError, FileExistsError) as exc:
        return _fail(args, out, str(exc), 2)
    except RankFailed as exc:
        return _fail(args, out, str(exc), 2 if exc.exitcode == 2 else 1)
    except KeyboardInterrupt:
        return _fail(args, out, "aborted: the job's processes were ended; resume from its last checkpoint", 130)


def _fail(args: argparse.Namespace, out: TextIO, message: str, status: int, field: str | None = None) -> int:
    """One line on stderr; with --events jsonl also an error event, so a program following stdout sees why."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if getattr(args, "events", None) == "jsonl":
        _error_event(out, message, field)
    return status


def _error_event(out: TextIO, message: str, field: str | None) -> None:
    """The error as ``--events jsonl`` followers read it (distributed.follow): which field, and why."""
    print(json.dumps({"event": "error", "field": field, "message": message}), file=out, flush=True)


def entry() -> None:
    """The program itself (console script, ``python -m``): a process that has not computed anything yet, so a
    precision verdict that needs oneDNN held below AMX can still set the limit (see hardware.py)."""
    from .hardware import fresh_process

    fresh_process()
    sys.exit(main())


if __name__ == "__main__":
    entry()
