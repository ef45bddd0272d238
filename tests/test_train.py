"""The training engine, driven directly: the same generator the widget and the command line run."""

from __future__ import annotations

import csv
import json
import math
import threading

import numpy as np
import pytest
import torch

from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.planning.plan import auto_fields
from napari_plantbio_train.job.events import CheckpointSaved, Finished, Preview, Progress, Started, Validation
from napari_plantbio_train.models.store import ModelError, ModelStore
from napari_plantbio_train.training.loop import lr_at, run_to_end, train
from napari_plantbio_train.models.losses import segmentation_loss

TINY = dict(base_channels=4, depth=2, iterations=12, validate_every=6, iteration_save=6, log_every=2,
            batch_size=1, workers=2, lr=3e-3)


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_lr_warms_up_then_decays():
    assert lr_at(0, 0.0, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 0.1, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(50, 0.5, 1e-3, 10) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(100, 1.0, 1e-3, 10) == pytest.approx(1e-5)


def test_a_time_limited_jobs_warm_up_ends_with_a_tenth_of_its_time():
    # A one-minute round capped at 1,000 iterations: warm-up of 100 iterations, but ~150 fit in its minute.
    assert lr_at(4, 0.05, 1e-3, 100, time_share=0.05) == pytest.approx(0.5e-3), "half way through a tenth"
    assert lr_at(7, 0.1, 1e-3, 100, time_share=0.1) == pytest.approx(1e-3), "the peak at a tenth of the time"
    cosine = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(0.3 * math.pi)))
    assert lr_at(20, 0.3, 1e-3, 100, time_share=0.3) == pytest.approx(cosine)


def test_an_iteration_bound_jobs_warm_up_follows_its_iterations_only():
    # Progress alone (no time limit) must not end the ramp: a 20-iteration job warms up over 3 iterations.
    assert lr_at(0, 0.05, 1e-3, 3) == pytest.approx(1e-3 / 3)
    assert lr_at(1, 0.1, 1e-3, 3) == pytest.approx(2e-3 / 3)


def test_losses_fall_to_near_zero_for_a_perfect_prediction():
    target = torch.zeros(1, 2, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    perfect = (target * 2 - 1) * 20
    assert segmentation_loss(perfect, target, "instance") < 0.05
    assert segmentation_loss(-perfect, target, "instance") > 1.5
    classes = torch.zeros(1, 8, 8, dtype=torch.long)
    classes[:, :4] = 1
    logits = torch.nn.functional.one_hot(classes, 2).movedim(-1, 1).float() * 20
    assert segmentation_loss(logits, classes, "semantic") < 0.05


def test_instance_3d_writes_a_complete_model(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="chl3d", mode="instance", dims="3d", window=(2, 64, 64),
                         voxel_size=(5, 5, 50), **TINY)
    folder, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    assert isinstance(events[0], Started) and events[0].window == (2, 64, 64)
    progress = _of(events, Progress)
    assert [p.iteration for p in progress] == list(range(1, 13))
    assert all(np.isfinite(p.loss) and p.lr > 0 for p in progress)
    validations = _of(events, Validation)
    assert [v.iteration for v in validations] == [6, 12]
    assert {"f1", "foreground_iou"} <= set(validations[0].metrics)
    preview = _of(events, Preview)[-1]
    z, y, x = (b - a for a, b in events[0].validation_region)
    assert preview.probabilities.shape == (2, z, y, x) and preview.labels.shape == (z, y, x)
    assert 0 <= preview.probabilities.min() and preview.probabilities.max() <= 1
    finished = events[-1]
    assert isinstance(finished, Finished) and not finished.stopped and finished.iteration == 12
    assert {p.name for p in folder.iterdir()} >= {"model.json", "config.json", "metrics.csv", "checkpoints"}
    assert {p.name for p in (folder / "checkpoints").iterdir()} == {"iter_0000006.pt", "iter_0000012.pt",
                                                                    "best.pt"}
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "lr", "seconds_per_iteration", "data_seconds", "validation_score"} <= set(rows[0])
    assert rows[2]["validation_score"] != "" and rows[0]["validation_score"] == ""
    store = ModelStore(models_dir)
    assert store.names() == ["chl3d"]
    model, record = store.load_model("chl3d")
    # The job as it trained: the fields given, and the plan's choices for those left empty.
    assert record.iterations_done == 12
    assert record.config.replace(**{f: getattr(config, f) for f in auto_fields(config)}) == config
    assert all(getattr(record.config, f) is not None for f in auto_fields(config))
    assert record.normalisation["low"] < record.normalisation["high"]
    x = torch.zeros(1, 1, 2, 64, 64)
    assert model(x).shape == (1, 2, 2, 64, 64)


def test_semantic_2d_maps_noncontiguous_classes(plate_crop, models_dir):
    image, labels = plate_crop
    labels = np.where(labels > 0, 7, 0).astype(np.uint8)
    labels[:10, :10] = 3  # a third, rare class with a gap in the values
    config = TrainConfig(name="plate", mode="semantic", dims="2d", window=(64, 64), **TINY)
    folder, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    record = ModelStore(models_dir).record("plate")
    assert record.classes == [0, 3, 7]
    preview = _of(events, Preview)[-1]
    assert preview.probabilities.shape[0] == 3 and preview.probabilities.shape[1] == 1
    assert set(np.unique(preview.labels)) <= {0, 3, 7}
    np.testing.assert_allclose(preview.probabilities.sum(0), 1.0, atol=1e-4)
    assert "mean_iou" in _of(events, Validation)[0].metrics


@pytest.mark.parametrize("dtype,scale", [(np.uint16, 250.0), (np.float32, 1 / 255.0)])
def test_any_numeric_image_type_trains(chloroplast_crop, models_dir, dtype, scale):
    image, labels = chloroplast_crop
    converted = (image.astype(np.float64) * scale).astype(dtype)
    config = TrainConfig(name=f"t-{np.dtype(dtype).name}", mode="instance", dims="2d", window=(64, 64),
                         **{**TINY, "iterations": 4, "validate_every": 4})
    _, events = run_to_end(train(config, converted, labels, models_dir=models_dir))
    record = ModelStore(models_dir).record(config.name)
    low, high = record.normalisation["low"], record.normalisation["high"]
    assert low >= converted.min() and high <= converted.max() and high > low
    assert np.isfinite(_of(events, Progress)[-1].loss)


def test_stop_leaves_a_loadable_checkpoint_and_resume_continues(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="stopme", mode="instance", dims="2d", window=(64, 64),
                         **{**TINY, "iterations": 40, "iteration_save": 100})
    stop = threading.Event()
    events = []
    for event in train(config, image, labels, models_dir=models_dir, stop=stop):
        events.append(event)
        if isinstance(event, Progress) and event.iteration == 5:
            stop.set()
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.stopped and finished.reason == "stopped"
    assert finished.iteration == 5
    assert _of(events, CheckpointSaved)[-1].reason == "stop"
    store = ModelStore(models_dir)
    model, record = store.load_model("stopme", "last")
    assert record.iterations_done == 5

    resumed = config.replace(iterations=8)
    _, more = run_to_end(train(resumed, image, labels, models_dir=models_dir, resume=True))
    assert more[0].start_iteration == 5
    assert [p.iteration for p in _of(more, Progress)] == [6, 7, 8]
    assert store.record("stopme").iterations_done == 8
    rows = list(csv.DictReader(open(store.folder("stopme") / "metrics.csv")))
    assert rows[0]["iteration"] == "2" and rows[-1]["iteration"] == "8"


def test_time_limit_ends_with_a_checkpoint(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="timed", mode="instance", dims="2d", window=(64, 64), time_limit_min=0.02,
                         **{**TINY, "iterations": 100000, "validate_every": 100000, "iteration_save": 100000})
    folder, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    assert events[-1].reason == "time limit" and events[-1].stopped
    assert 0 < events[-1].iteration < 100000
    assert ModelStore(models_dir).record("timed").iterations_done == events[-1].iteration


def test_bad_labels_are_refused_before_anything_is_written(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="bad", mode="instance", dims="3d", window=(2, 64, 64), **TINY)
    with pytest.raises(ValueError, match="labels"):
        next(train(config, image, labels.astype(np.float32) + 0.5, models_dir=models_dir))
    with pytest.raises(ConfigError, match="labels.*empty"):
        next(train(config, image, np.zeros_like(labels), models_dir=models_dir))
    with pytest.raises(ConfigError, match="window"):
        next(train(config.replace(window=(2, 512, 512)), image, labels, models_dir=models_dir))
    assert not (models_dir / "bad").exists()


def test_a_crash_before_the_first_checkpoint_leaves_no_model(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="crash", mode="instance", dims="2d", window=(64, 64), **TINY)
    events = train(config, image, labels, models_dir=models_dir)
    next(events)  # Started: the folder exists, the model does not yet
    events.close()  # the consumer went away (viewer closed, process killed) before any checkpoint
    assert not ModelStore(models_dir).exists("crash")
    assert ModelStore(models_dir).names() == []
    # and the name is free again
    _, again = run_to_end(train(config.replace(iterations=2), image, labels, models_dir=models_dir))
    assert ModelStore(models_dir).exists("crash")


def test_loading_refuses_a_pickled_object(models_dir, chloroplast_crop):
    image, labels = chloroplast_crop
    config = TrainConfig(name="evil", mode="instance", dims="2d", window=(64, 64), **{**TINY, "iterations": 2})
    folder, _ = run_to_end(train(config, image, labels, models_dir=models_dir))
    meta = json.loads((folder / "model.json").read_text())

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"model": Payload()}, folder / meta["last"])
    with pytest.raises(ModelError, match="safely"):
        ModelStore(models_dir).load_model("evil", "last")


def test_validation_block_holds_labels_when_only_part_is_painted():
    """Labels painted on one side only: the held-out block must come from where objects were painted."""
    from napari_plantbio_train.training.sampling import split_validation

    from napari_plantbio_train.training.sampling import crop

    painted = np.zeros((1, 400, 300), bool)
    painted[:, 250:, 200:] = np.random.default_rng(0).random((1, 150, 100)) > 0.7  # lower right only
    train_region, val_region = split_validation(painted.shape, (1, 128, 128), 0.15, painted)
    assert crop(painted, val_region).any() and crop(painted, train_region).any()
    assert val_region[1] == (340, 400) or val_region[2] == (255, 300)


def test_continue_from_a_model_makes_a_new_version(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    parent_config = TrainConfig(name="v1", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                                **TINY)
    run_to_end(train(parent_config, image, labels, models_dir=models_dir))
    store = ModelStore(models_dir)
    parent = store.record("v1")
    parent_weights = store.load_checkpoint(parent)["model"]
    parent_files = {p: p.stat().st_mtime_ns for p in parent.folder.rglob("*") if p.is_file()}

    corrected = labels.copy()
    corrected[:, :40] = 0  # the user deleted false objects in one corner
    # The new job asks for another network width and voxel size: the parent's win, they define the model.
    child_config = TrainConfig(name="v2", init_from="v1", window=(2, 64, 64), base_channels=8, lr=5e-4,
                               voxel_size=(1, 1, 1),
                               **{k: v for k, v in TINY.items() if k not in ("lr", "base_channels")})
    run_to_end(train(child_config, image, corrected, models_dir=models_dir))
    child = store.record("v2")
    assert child.parent == "v1" and child.lineage == ("v1",)
    assert child.normalisation == parent.normalisation and child.network == parent.network
    assert child.config.base_channels == parent.config.base_channels and child.config.voxel_size == (5, 5, 50)
    child_weights = store.load_checkpoint(child, "last")["model"]
    assert any(not torch.equal(child_weights[k], parent_weights[k]) for k in parent_weights)
    # Nothing of the parent was touched.
    assert {p: p.stat().st_mtime_ns for p in parent.folder.rglob("*") if p.is_file()} == parent_files
    with pytest.raises(ConfigError, match="init_from"):
        run_to_end(train(child_config.replace(name="v3", init_from="nobody"), image, labels, models_dir=models_dir))


def test_every_checkpoint_rebuilds_its_model_alone(models_dir, tmp_path):
    """A checkpoint carries its network, normalisation and classes as plain data: copied out of its folder, it
    still makes the same predictions, and it is still read with weights_only=True."""
    from napari_plantbio_train.models.store import load_checkpoint_file
    from napari_plantbio_train.io.synthetic import make_stack

    stack = make_stack((1, 64, 64), seed=1)
    config = TrainConfig(name="alone", mode="semantic", dims="2d", window=(32, 32), **TINY)
    run_to_end(train(config, stack.image[0], stack.semantic[0], models_dir=models_dir))
    model, record = ModelStore(models_dir).load_model("alone")
    for name in ("best.pt", "iter_0000012.pt"):
        copied = tmp_path / name
        copied.write_bytes((record.folder / "checkpoints" / name).read_bytes())
        again, description = load_checkpoint_file(copied)
        assert description["network"] == record.network and description["classes"] == record.classes
        assert description["normalisation"] == record.normalisation and description["mode"] == "semantic"
        x = torch.randn(1, 1, 32, 32)
        if name == "best.pt":
            with torch.no_grad():
                torch.testing.assert_close(again(x), model(x))
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="does not describe its network"):
        load_checkpoint_file(tmp_path / "bare.pt")


@pytest.mark.parametrize("share, ends_within", [(0.25, True), (0.0, False)])
def test_a_time_limited_job_keeps_its_last_validation_within_its_limit(chloroplast_crop, models_dir, monkeypatch,
                                                                       share, ends_within):
    """On a clock that moves only when read (and 5 s per validation), a job with a 30 s limit ends with its last
    validation done by then; without the reserve (share 0) that validation comes after the limit."""
    from types import SimpleNamespace

    from napari_plantbio_train.training import loop

    clock = [0.0]

    def now() -> float:
        clock[0] += 0.01
        return clock[0]

    real = loop.score_region

    def validation(*args, **kwargs):
        clock[0] += 5.0
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=now))
    monkeypatch.setattr(loop, "score_region", validation)
    monkeypatch.setattr(loop, "FINAL_VALIDATION_SHARE", share)
    image, labels = chloroplast_crop
    config = TrainConfig(name="reserved", mode="instance", dims="2d", window=(64, 64), time_limit_min=0.5,
                         **{**TINY, "iterations": 100000, "validate_every": 40, "iteration_save": 100000})
    started = clock[0]
    _, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    finished = _of(events, Finished)[-1]
    validations = _of(events, Validation)
    assert finished.reason == "time limit" and validations[-1].iteration == finished.iteration
    assert (clock[0] - started <= 31.0) is ends_within


def test_validations_of_an_interval_left_to_the_job_keep_to_their_share_of_its_time(chloroplast_crop, models_dir,
                                                                                 monkeypatch):
    # Held-out corrections once took longer to score than the iterations between two validations took to run.
    # Here a validation takes a second and a step a fraction of one: a job that chose its own interval validates
    # when validations have taken at most VALIDATION_SHARE of its time, and at its end; an interval the user gave
    # is kept to the letter.
    import time

    from napari_plantbio_train.training import loop

    real = loop.score_region

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "score_region", slow)
    image, labels = chloroplast_crop
    fields = dict(TINY, iterations=40, validate_every=None, iteration_save=40)
    config = TrainConfig(name="paced", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                         **fields)
    _, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    interval = ModelStore(models_dir).record("paced").config.validate_every
    due = list(range(interval, 41, interval))
    validated = [v.iteration for v in _of(events, Validation)]
    assert len(due) >= 3 and validated[0] == due[0] and validated[-1] == 40
    assert set(validated) <= set(due) and len(validated) < len(due)  # some due validations waited
    given = config.replace(name="given", validate_every=interval)
    _, events = run_to_end(train(given, image, labels, models_dir=models_dir))
    assert [v.iteration for v in _of(events, Validation)] == due


def test_a_chosen_validation_waits_when_the_final_one_would_follow_it_too_soon():
    from napari_plantbio_train.training.loop import validation_waits

    # 60 s limit, validations of 4 s (2 s spent so far): at 40 s, 12 s of training would follow this validation
    # before the final one; at 50 s only 2, less than the validation itself.
    assert not validation_waits(False, validating=2.0, reserve=4.0, elapsed=40.0, limit=60.0)
    assert validation_waits(False, validating=2.0, reserve=4.0, elapsed=50.0, limit=60.0)
    assert not validation_waits(True, validating=2.0, reserve=4.0, elapsed=50.0, limit=60.0), "the last never waits"
    assert not validation_waits(False, validating=2.0, reserve=4.0, elapsed=50.0, limit=0.0), "no limit, no final"
    assert validation_waits(False, validating=8.0, reserve=4.0, elapsed=40.0, limit=0.0), "past the time share"


def test_a_time_limited_job_does_not_validate_just_before_its_final_validation(chloroplast_crop, models_dir,
                                                                                monkeypatch):
    """On a clock that moves only when read, with one validation due every 20 iterations (about 1 s) and a 30 s
    limit: the first validation takes 0.1 s, the others 2.3 s. After the second, the time share next allows one at
    about 23.5 s, which would leave less training before the final one (2.3 s kept back for it) than it costs
    itself: a job that chose its own interval skips it (without that rule it validated at iteration 280 and again
    at 286) and trains on. An interval the user gave is kept."""
    from types import SimpleNamespace

    from napari_plantbio_train.planning import plan
    from napari_plantbio_train.training import loop

    clock, stamps = [0.0], []

    def now() -> float:
        clock[0] += 0.01
        return clock[0]

    real = loop.score_region

    def validation(*args, **kwargs):
        stamps.append(clock[0])
        clock[0] += 0.1 if len(stamps) == 1 else 2.3
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=now))
    monkeypatch.setattr(loop, "score_region", validation)
    monkeypatch.setattr(plan, "validation_interval", lambda iterations: 20)
    image, labels = chloroplast_crop
    config = TrainConfig(name="spaced", mode="instance", dims="2d", window=(64, 64), time_limit_min=0.5,
                         **{**TINY, "iterations": 100000, "validate_every": None, "iteration_save": 100000})
    _, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    finished = _of(events, Finished)[-1]
    assert finished.reason == "time limit"
    assert [v.iteration for v in _of(events, Validation)] == [20, 40, finished.iteration]
    assert stamps[-1] - stamps[-2] > 20.0
    stamps.clear()
    run_to_end(train(config.replace(name="given", validate_every=20), image, labels, models_dir=models_dir))
    assert len(stamps) > 3, "an interval the user gave is kept"


def test_a_flat_validation_score_keeps_the_weights_that_overlap_the_truth_best(chloroplast_crop, models_dir,
                                                                               monkeypatch):
    """An F1 over a handful of held-out objects stays flat for thousands of iterations; among equal scores the
    best checkpoint is the one whose foreground overlaps the truth most, not merely the first to reach it."""
    from dataclasses import replace

    from napari_plantbio_train.training import loop

    real = loop.score_region
    overlaps = iter([0.70, 0.90, 0.80])  # the second validation's weights overlap best; all score F1 0.5

    def flat(*args, **kwargs):
        return replace(real(*args, **kwargs), score=0.5, tiebreak=next(overlaps))

    monkeypatch.setattr(loop, "score_region", flat)
    image, labels = chloroplast_crop
    config = TrainConfig(name="flat", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                         **dict(TINY, iterations=18))
    _, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    assert [v.is_best for v in _of(events, Validation)] == [True, True, False]
    record = ModelStore(models_dir).record("flat")
    assert (record.best_iteration, record.best_score) == (12, 0.5)
    assert json.loads((record.folder / "model.json").read_text())["best_tiebreak"] == 0.9


@pytest.mark.parametrize("scores, kept, averages", [
    # One lucky validation early, then scores just below it: the later weights, trained longer, are kept
    # (the plate's iteration 600 of 3,584 scored 0.898 once; later checkpoints labelled new rows better).
    # Running averages 0.8, 0.83, 0.839, 0.8513, 0.86291.
    ((0.80, 0.90, 0.86, 0.88, 0.89), 5, (0.86291, 0.86291)),
    # A real decline: the weights before it stay the best. Averages 0.5, 0.62, 0.704, 0.5828, 0.49796.
    ((0.50, 0.90, 0.90, 0.30, 0.30), 3, (0.704, 0.49796)),
])
def test_the_best_weights_are_chosen_on_the_smoothed_validation_score(chloroplast_crop, models_dir, monkeypatch,
                                                                       scores, kept, averages):
    """A held-out block of few objects scores noisily: one high validation must not outweigh several close ones,
    while a clear fall still keeps the weights from before it."""
    from dataclasses import replace

    from napari_plantbio_train.training import loop

    real = loop.score_region
    given = iter(scores)

    def noisy(*args, **kwargs):
        return replace(real(*args, **kwargs), score=next(given), tiebreak=0.5)

    monkeypatch.setattr(loop, "score_region", noisy)
    image, labels = chloroplast_crop
    config = TrainConfig(name="noisy", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                         **dict(TINY, iterations=10, validate_every=2, iteration_save=10))
    _, events = run_to_end(train(config, image, labels, models_dir=models_dir))
    validations = _of(events, Validation)
    assert [v.score for v in validations] == list(scores)
    chosen = [v for v in validations if v.is_best][-1]
    record = ModelStore(models_dir).record("noisy")
    assert (record.best_iteration, record.best_score) == (2 * kept, scores[kept - 1]) == (chosen.iteration,
                                                                                          chosen.score)
    meta = json.loads((record.folder / "model.json").read_text())
    assert (meta["best_smoothed"], meta["score_smoothed"]) == pytest.approx(averages)
