"""The plan: a job left on its defaults chooses everything from its data and this machine, and trains on any data
the defaults must serve; a default the tool chose is never refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from napari_plantbio_train.cli import main
from napari_plantbio_train.io.synthetic import make_stack
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Finished, Started, run_to_end
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.planning.fingerprint import estimate_z_steps
from napari_plantbio_train.planning.plan import auto_fields, make_plan
from napari_plantbio_train.planning.timing import TIMES_FILE
from napari_plantbio_train.runtime.hardware import cache_folder
from napari_plantbio_train.training.loop import train

CPU = torch.device("cpu")
A_FEW = dict(iterations=2, iteration_save=2)  # the only fields given beside mode and dims: a few iterations


def _disks(shape, seed=0, radius=9):
    """Touching disks of one kind (instance ids) in every slice, and an image where they are dark."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    z, y, x = shape
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = yy ** 2 + xx ** 2 < radius ** 2
    for i in range(1, max(3, y * x // 900)):  # each disk drawn in its own box: a 3000x3000 image takes a second
        cy, cx = int(rng.uniform(radius, y - radius - 1)), int(rng.uniform(radius, x - radius - 1))
        box = labels[:, cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
        box[:, disk] = i
    image = (160 - 80 * (labels > 0) + rng.normal(0, 10, shape)).clip(0, 255)
    return image, labels


CASES = {
    "the sample stack": lambda: (make_stack().image, make_stack().instances, "instance", "3d"),
    "a 64x64 2D image": lambda: (*[a[0] for a in _disks((1, 64, 64))], "instance", "2d"),
    "a 2-slice stack": lambda: (*_disks((2, 96, 96)), "instance", "3d"),
    "a 3000x3000 2D image": lambda: (*[a[0] for a in _disks((1, 3000, 3000), radius=14)], "semantic", "2d"),
    "a uint16 stack": lambda: ((_disks((4, 80, 80))[0] * 200).astype(np.uint16), _disks((4, 80, 80))[1], "instance",
                               "3d"),
    "a float32 stack": lambda: (_disks((4, 80, 80))[0].astype(np.float32) / 255, _disks((4, 80, 80))[1], "instance",
                                "3d"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_fields_train_on_any_stack(case, models_dir):
    image, labels, mode, dims = CASES[case]()
    if mode == "semantic":
        labels = (labels > 0).astype(np.uint8)
    config = TrainConfig(name="defaults", mode=mode, dims=dims, **A_FEW)
    folder, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    started = next(e for e in events if isinstance(e, Started))
    assert started.plan and started.plan[0].startswith("plan (fields left on auto):")
    assert isinstance(events[-1], Finished) and events[-1].iteration == 2
    record = ModelStore(models_dir).record("defaults")
    assert all(getattr(record.config, name) is not None for name in auto_fields(config) if name != "voxel_size")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["plan"]["values"]["window"] == list(started.window)


def test_partial_labels_on_three_slices_train_on_defaults(models_dir):
    stack = make_stack((10, 160, 160), seed=6)
    painted = stack.instances.copy()
    painted[[z for z in range(10) if z not in (1, 5, 8)]] = 0
    config = TrainConfig(name="sparse", mode="instance", dims="3d", painted_slices_only=True, **A_FEW)
    _, events = run_to_end(train(config, stack.image, painted, models_dir=models_dir))
    assert isinstance(events[-1], Finished)


def test_the_sample_stack_is_not_refused_by_the_default_window(tmp_path, models_dir):
    """The plugin's own sample (12 x 256 x 256) once met 'y size 256 leaves no room for a validation block'."""
    stack = make_stack()
    tifffile.imwrite(tmp_path / "image.tif", stack.image)
    tifffile.imwrite(tmp_path / "labels.tif", stack.instances)
    out = io.StringIO()
    assert main(["train", "--image", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"),
                 "--mode", "instance", "--dims", "3d", "--name", "sample", "--iterations", "2", "--models-dir",
                 str(models_dir), "--quiet"], out=out) == 0
    assert "plan (fields left on auto):" in out.getvalue()


def test_train_plan_prints_the_plan_and_exits(tmp_path, models_dir, monkeypatch):
    monkeypatch.setenv("PLANTBIO_CACHE_DIR", str(tmp_path / "cache"))  # its own: what it measures, and only that
    stack = make_stack()
    tifffile.imwrite(tmp_path / "image.tif", stack.image)
    tifffile.imwrite(tmp_path / "labels.tif", stack.instances)
    args = ["train", "--image", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"), "--mode",
            "instance", "--dims", "3d", "--name", "planned", "--time-limit", "15", "--plan", "--models-dir",
            str(models_dir)]
    first, again = io.StringIO(), io.StringIO()
    assert main(args, out=first) == 0
    times = cache_folder() / TIMES_FILE
    if not times.exists():
        pytest.skip("other processes shared the cores: step times were not kept, so a second plan re-measures")
    assert main(args, out=again) == 0
    assert not ModelStore(models_dir).exists("planned"), "--plan trains nothing"
    lines = first.getvalue().splitlines()
    assert lines[0].startswith("plan (fields left on auto):") and "iterations in 15 min" in lines[1]
    chosen = json.loads(lines[-1])
    assert {"window", "stem_stride", "flat_levels", "depth", "batch_size", "lr"} <= set(chosen)
    # The same data and machine figures give the same plan: the choices (a time re-measured because other work
    # shared the cores may differ in its last digits, the choice it leads to must not flip between runs here).
    assert json.loads(again.getvalue().splitlines()[-1]) == chosen, "the same data and machine, the same plan"


def test_a_field_the_user_sets_is_kept():
    stack = make_stack()
    config = TrainConfig(name="mine", mode="instance", dims="3d", window=(4, 128, 128), stem_stride=2, lr=5e-4,
                         voxel_size=(8.0, 8.0, 40.0), time_limit_min=15)
    plan = make_plan(config, stack.image, stack.instances, device=CPU, precision="fp32")
    resolved = plan.apply(config)
    assert (resolved.window, resolved.stem_stride, resolved.lr, resolved.voxel_size) == \
        ((4, 128, 128), 2, 5e-4, (8.0, 8.0, 40.0))
    assert "window" not in plan.auto and "voxel_size" not in plan.auto and plan.voxel_source == "given"


def test_a_tight_budget_gets_a_cheaper_network_than_a_loose_one():
    stack = make_stack((8, 128, 128), seed=2)
    tight = make_plan(TrainConfig(name="a", mode="instance", dims="3d", time_limit_min=0.5), stack.image,
                      stack.instances, device=CPU, precision="fp32")
    loose = make_plan(TrainConfig(name="a", mode="instance", dims="3d", time_limit_min=10_000), stack.image,
                      stack.instances, device=CPU, precision="fp32")
    assert tight.seconds_per_iteration < loose.seconds_per_iteration
    assert tight.expected_iterations > 0 and tight.lines()


@pytest.mark.parametrize("minutes, iterations, stem", [(15, 5000, 2), (15, 2000, 1), (None, 5000, 1)])
def test_on_a_cpu_a_finer_stem_only_where_the_time_leaves_it_every_iteration(monkeypatch, minutes, iterations, stem):
    """The step times measured on an AVX512-BF16 CPU for 4x128x128 (0.07 s at stem 2, 0.19 s at stem 1): in 15
    minutes stem 1 runs 4,736 of 5,000 iterations, so the plan takes stem 2, which scored higher on unseen tissue;
    where stem 1 runs them all (a smaller total, or no time limit) it keeps the finer stem."""
    from napari_plantbio_train.planning import plan as planning

    monkeypatch.setattr(planning, "_seconds", lambda candidate, *args: {2: 0.07, 1: 0.19}[candidate.stem_stride])
    stack = make_stack((8, 160, 160), seed=2)
    config = TrainConfig(name="a", mode="instance", dims="3d", time_limit_min=minutes, iterations=iterations)
    plan = make_plan(config, stack.image, stack.instances, device=CPU, precision="bf16")
    assert plan.values["stem_stride"] == stem
    assert {c.stem_stride for c in plan.candidates} == {1, 2}  # both measured, the choice is the rule's
    if stem == 2:
        assert any("of the job's 5,000 iterations" in line for line in plan.lines())


def _smooth_volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=(120, 160, 160)).astype(np.float32), 3)


@pytest.mark.parametrize("coarser", [1, 5, 10])
def test_z_coarseness_is_read_from_the_image(coarser):
    volume = _smooth_volume()[::coarser]
    steps, detail = estimate_z_steps(volume)
    assert coarser / 2 <= steps <= coarser * 2, (steps, detail)
    image = ((volume - volume.min()) / np.ptp(volume) * 255).astype(np.uint8)
    plan = make_plan(TrainConfig(name="z", mode="semantic", dims="3d"), image, (volume > 0.05).astype(np.uint8),
                     device=CPU, precision="fp32", measure=False)
    assert plan.voxel_source == ("isotropic by the image" if coarser == 1 else "estimated from the image")


def test_an_unknown_voxel_size_is_not_trusted_on_coarse_slices():
    volume = _smooth_volume()[::6]
    image = ((volume - volume.min()) / np.ptp(volume) * 255).astype(np.uint8)
    labels = (volume > 0.05).astype(np.uint8)
    plan = make_plan(TrainConfig(name="z", mode="semantic", dims="3d"), image, labels, device=CPU,
                     precision="fp32", measure=False)
    assert plan.voxel_source == "estimated from the image" and 3 <= plan.values["voxel_size"][2] <= 12
    assert any("voxel size unknown (1/1/1)" in line for line in plan.lines())


def test_a_step_time_taken_on_shared_cores_is_not_kept(tmp_path, monkeypatch):
    """Step times measured while other processes keep the cores busy would make every later plan too cautious."""
    import multiprocessing
    import os

    from napari_plantbio_train.planning import timing

    monkeypatch.setenv("PLANTBIO_CACHE_DIR", str(tmp_path))
    network = dict(spatial_dims=3, in_channels=1, out_channels=2, base_channels=8, depth=2, anisotropy=1.0,
                   stem_stride=2, max_z_pools=1)
    threads = min(2, os.cpu_count() or 1)
    busy = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(2 * threads)]
    for process in busy:
        process.start()
    try:
        timing.step_seconds(network, (2, 96, 96), 2, "instance", device=CPU, precision="fp32", threads=threads)
    finally:
        for process in busy:
            process.kill()
    assert not (tmp_path / timing.TIMES_FILE).exists()


def _spin() -> None:
    while True:
        pass


def test_a_continuation_keeps_its_parents_voxel_size_and_plans_nothing(tiny_models, tmp_path, chloroplast_crop):
    # The parent was trained at 5/5/50; its config on disk says napari's 1/1/1 (as a layer at default scale
    # would). A new version must not estimate the voxel size again from the new stack, nor time networks: its
    # network is its parent's.
    import shutil

    from napari_plantbio_train.training.material import continuation

    models = tmp_path / "models"
    shutil.copytree(tiny_models / "chl", models / "chl")
    config_file = models / "chl" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "voxel_size": [1.0, 1.0, 1.0]}))
    parent = ModelStore(models).record("chl")
    assert parent.voxel_size == (5.0, 5.0, 50.0) and parent.config.voxel_size == (1.0, 1.0, 1.0)
    image, labels = chloroplast_crop
    job = continuation(parent, "chl-v2").replace(iterations=2, iteration_save=2, validate_every=2, workers=1)
    _, events = run_to_end(train(job, image, labels, models_dir=models))
    assert next(e for e in events if isinstance(e, Started)).plan == ()
    assert ModelStore(models).record("chl-v2").voxel_size == (5.0, 5.0, 50.0)


def test_a_short_version_validates_at_its_own_pace_not_its_parents_interval(tiny_models, tmp_path, chloroplast_crop):
    # A round of a minute at 0.4 s per iteration runs ~150 iterations: validated every 15, not every 200 as its
    # parent's hour was, which scored it once, at its end (its best checkpoint merely its last).
    import shutil

    from napari_plantbio_train.models.catalogue import step_seconds_logged
    from napari_plantbio_train.planning.plan import version_interval
    from napari_plantbio_train.training.material import continuation, correction_round

    models = tmp_path / "models"
    shutil.copytree(tiny_models / "chl", models / "chl")
    parent = ModelStore(models).record("chl")
    assert correction_round(parent, "chl-v2").validate_every is None  # chosen by the new job, not inherited
    assert version_interval(TrainConfig(name="r", iterations=1000, time_limit_min=1.0), 0.4) == 15
    assert version_interval(TrainConfig(name="r", iterations=40, time_limit_min=1.0), 0.4) == 10
    assert version_interval(TrainConfig(name="r", iterations=1000), None) == 100
    pace = step_seconds_logged(ModelStore(models), "chl")
    assert pace is not None and pace > 0
    image, labels = chloroplast_crop
    job = continuation(parent, "chl-v2").replace(iterations=3, iteration_save=3, workers=1)
    _, events = run_to_end(train(job, image, labels, models_dir=models))
    assert next(e for e in events if isinstance(e, Started)).plan == ()  # still nothing planned or timed
    assert ModelStore(models).record("chl-v2").config.validate_every == version_interval(job, pace) == 10


def test_every_round_fine_tunes_at_a_fifth_of_the_first_models_rate(tiny_models, tmp_path, chloroplast_crop):
    # A fifth of the parent's rate at each round compounded: round 3 trained at 1/125 of the first model's rate.
    import shutil

    from napari_plantbio_train.training.material import FINE_TUNE_LR_FACTOR, correction_round

    models = tmp_path / "models"
    shutil.copytree(tiny_models / "chl", models / "chl")
    store = ModelStore(models)
    first = store.record("chl")
    image, labels = chloroplast_crop
    reviewed = np.zeros(labels.shape, bool)
    reviewed[:, :96, :96] = True
    parent = first
    for version in ("chl-v2", "chl-v3"):
        job = correction_round(parent, version).replace(iterations=2, iteration_save=2, workers=1)
        assert job.lr == pytest.approx(first.config.lr * FINE_TUNE_LR_FACTOR), version
        run_to_end(train(job, image, labels, auto_labels=labels, reviewed=reviewed, models_dir=models))
        parent = store.record(version)
    assert correction_round(parent, "chl-v4").lr == pytest.approx(first.config.lr * FINE_TUNE_LR_FACTOR)
