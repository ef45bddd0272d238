"""What a user gets with the defaults: train on one part of a real stack, auto-label a part never trained on.

Each task trains with what a user fills in (data, mode, 2D/3D and a time budget; everything else left to the
plan, see planning/plan.py) and, with ``--recipes defaults,hand``, also with the hand-tuned recipe this
project's benchmarks used before the plan (``train_real.JOBS``), in the same run, one after the other. For each:
the plan's choices, iterations reached, the best validation score (on the held-out block of the training part)
and the scores of the labels of the part never trained on, not even as the validation block: what a biologist
gets on a new region of the same tissue.

    .venv/bin/python benchmarks/label_accuracy.py [--task chloroplast3d|plate2d|all] [--minutes 15]
        [--recipes defaults,hand,'FIELD=JSON;...'] [--set FIELD=JSON ...] [--intensity drift,mild] [--overlaps 0.5,0.25]
        [--checkpoints]

``--checkpoints`` also labels the unseen part with every checkpoint the job kept (the periodic ones and the last),
beside the best the product chose: how much the score on tissue never trained on moves between checkpoints of
one run that its validation block ranks alike (2026-12-07: chloroplast F1 0.455-0.681 within one run).

``--intensity`` trains each recipe with each intensity augmentation of training/sampling.py in turn (the default:
the one the product uses): ``drift`` (wide contrast, brightness, gamma, blur, noise) or ``mild`` (the narrow
contrast and brightness jitter used before).

Chloroplast: trained on x < 1600, labelled x >= 1600 (595 columns, about 25% of the stack).
Plate: trained on rows y < 700, labelled y >= 700 (243 rows).
Run it alone: the load average is printed beside every result. Results go to benchmarks/results/label_accuracy.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402
from train_real import DATA, JOBS  # noqa: E402

from napari_plantbio_train import LabelSettings, TrainConfig, label_stack, read, run_to_end, train  # noqa: E402
from napari_plantbio_train.evaluation.evaluate import evaluate  # noqa: E402
from napari_plantbio_train.runtime.hardware import cpu_model  # noqa: E402
from napari_plantbio_train.job.events import Finished, Started, Validation  # noqa: E402
from napari_plantbio_train.models.store import ModelRecord, ModelStore  # noqa: E402
from napari_plantbio_train.training import sampling  # noqa: E402
from napari_plantbio_train.training.rehearsal import REHEARSAL_FILE  # noqa: E402

INTENSITIES = {"drift": sampling.DRIFT, "mild": sampling.MILD}

SPLITS = {  # (training part, labelled part) as numpy index expressions on (Z, Y, X) / (Y, X)
    "chloroplast3d": ((slice(None), slice(None), slice(0, 1600)), (slice(None), slice(None), slice(1600, None))),
    "plate2d": ((slice(0, 700), slice(None)), (slice(700, None), slice(None))),
}
MODES = {"chloroplast3d": ("instance", "3d"), "plate2d": ("semantic", "2d")}


def job_for(task: str, recipe: str, minutes: float, overrides: dict) -> dict:
    mode, dims = MODES[task]
    fields = dict(mode=mode, dims=dims, time_limit_min=minutes, workers=os.cpu_count() or 1)
    if recipe == "hand":
        fields.update(JOBS[task], iterations=100_000, iteration_save=100_000)
    elif recipe != "defaults":  # FIELD=JSON[;FIELD=JSON...]: those fields set, the plan choosing the rest
        fields.update(parse_fields(recipe.split(";")))
    return {**fields, **overrides}


def parse_fields(pairs: list[str]) -> dict:
    """``FIELD=JSON`` strings as TrainConfig fields (JSON lists become tuples, as the config holds them)."""
    fields = {k.strip(): json.loads(v) for k, v in (p.split("=", 1) for p in pairs if p.strip())}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def run(task: str, recipe: str, minutes: float, models_dir: Path, overrides: dict,
        overlaps: list[float | None], checkpoints: bool = False) -> dict:
    stack = read(DATA / task / "image.tif")
    image, truth = stack.data, read(DATA / task / "labels.tif").data
    train_part, test_part = SPLITS[task]
    fields = job_for(task, recipe, minutes, overrides)
    if stack.voxel_size is not None and "voxel_size" not in fields:
        fields["voxel_size"] = tuple(stack.voxel_size)  # what the command line and the dock take from the file
    slug = recipe if recipe in ("defaults", "hand") else "recipe"  # a model name takes no brackets or '='
    config = TrainConfig(name=f"accuracy-{task}-{slug}-{int(time.time())}", **fields)
    load_before = os.getloadavg()
    started = time.perf_counter()
    best, iterations, plan, window = None, 0, [], None
    for event in train(config, image[train_part], truth[train_part], models_dir=models_dir):
        if isinstance(event, Started):
            plan, window = list(event.plan), list(event.window)
            for line in plan:
                print(f"[{task} {recipe}] {line}", flush=True)
        elif isinstance(event, Validation):
            print(f"[{task} {recipe}] {time.perf_counter() - started:5.0f}s it {event.iteration} validation "
                  f"{event.score:.4f}", flush=True)
        elif isinstance(event, Finished):
            best, iterations = event.best_score, event.iteration
    train_seconds = time.perf_counter() - started

    test_image, test_truth = image[test_part], truth[test_part]
    result = {"task": task, "recipe": recipe, "cpu": cpu_model(), "model": config.name, "train_minutes": minutes,
              "train_seconds": round(train_seconds), "iterations": iterations, "window": window,
              "best_validation": None if best is None else round(best, 4), "plan": plan,
              "labelled_shape": list(test_image.shape), "load_before": [round(v, 2) for v in load_before]}
    def scored(labels: np.ndarray) -> dict[str, float]:
        scores = evaluate(labels, test_truth, config.mode, per_slice=False)
        keys = (["f1_50", "precision_50", "recall_50", "ap_50", "f1_75", "n_pred", "n_true", "foreground_iou"]
                if config.mode == "instance" else [k for k in scores if k.startswith(("mean_", "iou_", "pixel"))])
        return {k: round(float(scores[k]), 4) for k in keys}

    for overlap in overlaps:
        start = time.perf_counter()
        labelled, events = run_to_end(label_stack(config.name, test_image, models_dir=models_dir,
                                                  settings=LabelSettings(**({} if overlap is None else
                                                                            {"overlap": overlap}))))
        key = "unseen" if overlap is None else f"unseen_overlap_{overlap:g}"
        result[key] = {"seconds": round(time.perf_counter() - start, 1), "precision": events[0].precision,
                       **scored(labelled.labels)}
    record = ModelStore(models_dir).record(config.name)
    floor = (record.postprocess or {}).get("min_confidence", 0.0)
    result["min_confidence"] = floor
    if floor:
        # The same weights without the floor their validation measured (inference/semantic.py): what it removed.
        labelled, _ = run_to_end(label_stack(config.name, test_image, models_dir=models_dir,
                                             settings=LabelSettings(postprocess={"min_confidence": 0.0})))
        result["unseen_without_floor"] = scored(labelled.labels)
    if checkpoints:
        result["unseen_by_checkpoint"] = by_checkpoint(record, test_image, scored)
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result), flush=True)
    return result


def by_checkpoint(record: ModelRecord, image: np.ndarray,
                  scored: Callable[[np.ndarray], dict[str, float]]) -> dict[str, dict]:
    """The unseen part's scores with each checkpoint the job kept, labelled as the product labels with its best:
    a copy of the model folder whose best checkpoint is that one (the store reads nothing else by choice)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="plantbio-checkpoint-") as scratch:
        for path in sorted((record.folder / "checkpoints").glob("*.pt")):
            if record.best and path.name == Path(record.best).name:
                continue
            # A folder of its own for each: the labeller keeps a model loaded per folder, name and model.json stamp.
            root = Path(scratch) / path.stem
            copy = root / record.name
            # Weights and the rehearsal crop stay behind: labelling reads neither but the two copied below.
            shutil.copytree(record.folder, copy, ignore=shutil.ignore_patterns("*.pt", REHEARSAL_FILE))
            shutil.copyfile(record.folder / record.last, copy / record.last)
            shutil.copyfile(path, copy / (record.best or record.last))  # what labelling reads as the best
            labelled, _ = run_to_end(label_stack(record.name, image, models_dir=root))
            out[path.stem] = scored(labelled.labels)
            print(f"  checkpoint {path.stem}: {out[path.stem]}", flush=True)
    return out


def split_recipes(text: str) -> list[str]:
    """Commas separate recipes, except inside a JSON list (``window=[4,128,128]``)."""
    recipes, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            recipes.append(current)
            current = ""
        else:
            current += char
    return [r.strip() for r in [*recipes, current] if r.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*SPLITS, "all"], default="all")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per run (wall clock)")
    parser.add_argument("--recipes", default="defaults",
                        help="defaults, hand, or a recipe of fields over the defaults, FIELD=JSON;FIELD=JSON; "
                             "several, comma-separated: defaults,hand or 'defaults,window=[4,128,128];stem_stride=2'")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="a field for every run, e.g. --set stem_stride=2 (a recipe beside the defaults)")
    parser.add_argument("--intensity", default=next(k for k, v in INTENSITIES.items() if v == sampling.INTENSITY),
                        help="intensity augmentation(s) to train with: drift, mild, or both: drift,mild")
    parser.add_argument("--overlaps", help="label the unseen part at each of these window overlaps, e.g. 0.5,0.25 "
                                           "(default: once, at the product's default overlap)")
    parser.add_argument("--checkpoints", action="store_true",
                        help="also score the unseen part with every kept checkpoint (a minute each on the chloroplast)")
    parser.add_argument("--models-dir", type=Path, help="keep the trained models here (default: a temp folder)")
    args = parser.parse_args()
    if not (DATA / "chloroplast3d" / "image.tif").exists():
        print(f"the real data is not at {DATA}", file=sys.stderr)
        return 1
    overlaps = [None] if not args.overlaps else [float(v) for v in args.overlaps.split(",")]
    overrides = parse_fields(args.set)
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="plantbio-accuracy-"))
    tasks = list(SPLITS) if args.task == "all" else [args.task]
    lines = [f"=== {datetime.datetime.now().isoformat(timespec='seconds')} label_accuracy "
             f"{' '.join(sys.argv[1:]) or '(defaults)'} on {cpu_model()}"]
    for task in tasks:
        for recipe in split_recipes(args.recipes):
            for intensity in args.intensity.split(","):
                # Windows are drawn in this process on a CPU (no data workers), so the choice reaches the sampler.
                sampling.INTENSITY = INTENSITIES[intensity.strip()]
                result = run(task, recipe.strip(), args.minutes, models_dir, overrides, overlaps, args.checkpoints)
                lines.append(json.dumps({"intensity": intensity.strip(), **result}))
    append("label_accuracy", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
