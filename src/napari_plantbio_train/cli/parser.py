"""The command line's options. Their names are a promise to scripts: keep them.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..inference.label import LabelSettings
from ..job.kinds import DIMS, MODES, PRECISIONS

# Post-processing settings the predict command takes (the model's saved values otherwise): the instance watershed's,
# and min_confidence in both modes.
POSTPROCESS_OPTIONS = ("fg_threshold", "seed_threshold", "min_size", "min_seed_size", "seed_prominence", "fill_holes",
                       "min_confidence")
POSTPROCESS_HELP = {
    "fill_holes": "instance post-processing (default: the model's): 1 fills the holes objects enclose in a slice, "
                  "0 keeps them",
    "min_confidence": "objects (semantic: regions of a class) whose mean probability is below this become "
                      "background (default: the model's, measured on its validation block; 0 keeps all)"}
# option -> TrainConfig field, for every option that maps one-to-one (the pairs are read by _pairs)
FIELD_OPTIONS = {
    "mode": "mode", "dims": "dims", "name": "name",
    "voxel_size": "voxel_size", "window": "window", "gpus": "gpus", "workers": "workers", "lr": "lr",
    "iteration_step": "iteration_step", "iteration_save": "iteration_save",
    "keep_checkpoints": "keep_checkpoints", "iterations": "iterations",
    "batch_size": "batch_size", "time_limit": "time_limit_min", "validate_every": "validate_every",
    "log_every": "log_every", "val_fraction": "val_fraction", "base_channels": "base_channels",
    "depth": "depth", "stem_stride": "stem_stride", "flat_levels": "flat_levels", "contour_width": "contour_width", "seed": "seed",
    "precision": "precision", "painted_slices_only": "painted_slices_only", "ignore_value": "ignore_value",
    "touched_margin": "touched_margin", "rehearse": "rehearse", "data_workers": "data_workers",
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
    add("--rehearse", type=float, metavar="SHARE",
        help="with --init-from: share of windows from the first model's data kept in its folder, so the new "
             "version does not forget it (default 0.5; 0: the given pairs only)")
    add("--reviewed", metavar="MASK",
        help="with --touched-only: a mask (non-zero: reviewed) of voxels checked by hand, trusted like the "
             "corrections even where the labels did not change (objects accepted as right)")
    add("--mode", choices=MODES, help="semantic (classes) or instance (touching objects apart)")
    add("--dims", choices=DIMS, help="2d: every slice on its own; 3d: the stack is one volume")
    add("--name", help="unique model name (a safe folder name); required unless --config gives it")
    add("--config", metavar="JOB.json",
        help="a job file: a model folder's config.json (re-run a job, e.g. one the dock started) or a job the dock "
             "wrote; options given beside it change its fields")
    add("--voxel-size", nargs=3, type=float, metavar=("X", "Y", "Z"), help="nm per pixel along x, y, z (default, or 1 1 1: unknown; the plan reads z's from the image)")
    add("--window", type=_window, help="window size Z,Y,X (3d) or Y,X (2d) (default: the plan's, fitted to the image)")
    add("--gpus", type=int, help="number of GPUs (0: CPU; default: 1 if CUDA is present); N > 1 trains on N GPUs "
                                 "at once, one process each (data-parallel)")
    add("--cpu-processes", type=int,
        help="on the CPU: data-parallel processes on this machine (default 1), e.g. for CPU clusters")
    add("--workers", type=int, help="CPU threads of this machine, shared by its processes")
    add("--data-workers", type=int,
        help="processes drawing training windows (default: --workers on a GPU, 0 on a CPU: the training thread)")
    add("--lr", type=float, help="base learning rate (default: the plan's)")
    add("--iteration-step", type=int, help="batches accumulated into one optimiser step")
    add("--iteration-save", type=int, help="checkpoint every N iterations")
    add("--keep-checkpoints", type=int, metavar="N",
        help="periodic checkpoints kept, the newest N (default 3); the last and the best are always kept")
    add("--iterations", type=int, help="iteration total")
    add("--batch-size", type=int, help="samples per batch (default: the plan's)")
    add("--time-limit", type=float, help="stop (with a checkpoint) after this many minutes")
    add("--validate-every", type=int, help="score the held-out block every N iterations (default: about ten times a job)")
    add("--log-every", type=int, help="write a metrics.csv row every N iterations")
    add("--val-fraction", type=float, help="share of the stack held out for validation")
    add("--base-channels", type=int, help="channels of the network's first level (default: the plan's)")
    add("--depth", type=int, help="downsampling steps of the network (default: the plan's, fitted to the window)")
    add("--stem-stride", type=int, help="in-plane stride of the first layer (1, 2 or 4; default: the plan's)")
    add("--flat-levels", type=int, help="3d: upper levels convolving in-plane only (default: the plan's)")
    add("--contour-width", type=int, help="instance mode: width in pixels of the band between touching objects (default: from the objects)")
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
    add("--plan", action="store_true",
        help="print what the plan chooses for the fields left empty (window, network, batch, ...), and why, "
             "without training")
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
    add("--image", required=True, action="append",
        help="stack to label (TIFF, a folder of TIFF slices, HDF5, zarr or .npy; read block by block); give it "
             "again for more stacks, or a quoted glob ('DIR/*.tif') that the tool expands")
    add("--output", help="labels to write for a single --image: O.tif or O.zarr")
    add("--output-dir", help="folder for the labels of every --image, each named after its input (NAME_labels.tif)")
    add("--format", choices=("tif", "zarr"), default="tif", help="with --output-dir: the results' format (default tif)")
    add("--overlap", type=float, default=LabelSettings.overlap,
        help=f"share of a window overlapping its neighbour (default {LabelSettings.overlap:g})")
    add("--tta", type=int, default=0, choices=(0, 4, 8), help="test-time variants averaged (default 0)")
    add("--batch-size", type=int, help="windows per forward pass (default: the model's samples per batch)")
    add("--models-dir", help="models folder (default: $PLANTBIO_MODELS_DIR or the user data folder)")
    add("--probabilities", help="also write the probability maps to this .zarr path")
    add("--uncertainty", help="also write a map of the model's doubt (0..1) to this .zarr or .tif path")
    add("--queue", metavar="QUEUE.json",
        help="instance models: also write the proofreading queue, the objects from the likeliest error down "
             "(doubt, unlike the training objects, size or shape, new tissue), as JSON")
    add("--novelty", metavar="MAP.npy|MAP.tif",
        help="with --queue: also write the 'new tissue' map (0..1 per tile: how unlike the training stack)")
    add("--near", metavar="REGIONS.json",
        help="label only the blocks that meet these regions (JSON: a list of [[z0, z1], [y0, y1], [x0, x1]]): a "
             "proofreading round relabels around the corrections first; their ids are numbered from 1")
    add("--far", action="store_true", help="with --near: label only the blocks that meet none of the regions")
    add("--cores", metavar="CORES.json",
        help="also write the blocks labelled (the core of each, as --near takes regions) as JSON")
    add("--checkpoint", choices=("best", "last"), default="best", help="which weights to use (default best)")
    add("--precision", choices=PRECISIONS, default="auto",
        help="auto: bf16 where the hardware runs it natively and a probe saw it work, else fp32")
    add("--device", help="cpu, cuda or cuda:N (default: the first GPU if there is one)")
    for name in POSTPROCESS_OPTIONS:
        add(f"--{name.replace('_', '-')}", type=float, help=POSTPROCESS_HELP.get(
            name, "instance post-processing (default: the model's)"))
    add("--block-voxels", type=int, default=LabelSettings.block_voxels, help="largest block held in memory")
    add("--workers", type=int, default=1, help="blocks labelled at once on this machine")
    add("--scheduler", help="address of a dask.distributed scheduler to run the blocks on")
    add("--overwrite", action="store_true", help="replace an existing output")
    add("--quiet", action="store_true", help="no progress bar")
    add("--events", choices=("text", "jsonl"), default="text",
        help="jsonl: one JSON object per event on stdout, for a program following the job (the dock does)")


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="score a labels result against ground truth (JSON)")
    add = evaluate.add_argument
    add("--prediction", required=True, action="append",
        help="labels to judge (TIFF, a folder of TIFF slices, HDF5, zarr or .npy); give it again for more pairs")
    add("--truth", required=True, action="append",
        help="ground-truth labels of the same shape; one per --prediction, in the same order")
    add("--mode", choices=MODES, default="instance", help="instance (objects, default) or semantic (classes)")
    add("--per-slice", action="store_true", help="instance: match objects within each slice (2D models)")
    add("--csv", help="also write the scores as CSV: metric,value for one pair, a row per pair for several")
    add("--objects", help="one pair: also write per-object statistics of the prediction as CSV")
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
