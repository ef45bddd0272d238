"""The weights' running average: what a job validates and keeps as its best, carried through a resume."""

from __future__ import annotations

import threading

import torch

from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Progress
from napari_plantbio_train.models.store import ModelStore, read_checkpoint
from napari_plantbio_train.training.averaging import MAX_DECAY, WeightAverage
from napari_plantbio_train.training.loop import run_to_end, train

TINY = dict(base_channels=4, depth=2, batch_size=1, workers=2, lr=3e-3, log_every=2)


def test_the_average_follows_the_warm_up_decay_and_leaves_the_weights_as_they_were():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model)
    expected = model.weight.detach().clone()
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update(model)
        keep = min(MAX_DECAY, (1 + step) / (10 + step))
        expected = keep * expected + (1 - keep) * model.weight.detach()
    torch.testing.assert_close(average.weights["weight"], expected)
    own = model.weight.detach().clone()
    with average.applied(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), own)


def test_the_weights_go_back_when_the_block_fails():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    own = model.weight.detach().clone()
    try:
        with average.applied(model):
            raise RuntimeError("scoring failed")
    except RuntimeError:
        pass
    torch.testing.assert_close(model.weight.detach(), own)


def test_the_best_holds_the_average_and_a_resumed_job_goes_on_with_it(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    # Without a validation block (validate_every past the end) the best is the end of the schedule: its average.
    config = TrainConfig(name="avg", mode="instance", dims="2d", window=(64, 64), iterations=12,
                         iteration_save=12, validate_every=1000, **TINY)
    stop, events = threading.Event(), []
    for event in train(config, image, labels, models_dir=models_dir, stop=stop):
        events.append(event)
        if isinstance(event, Progress) and event.iteration == 5:
            stop.set()
    store = ModelStore(models_dir)
    stopped = read_checkpoint(store.folder("avg") / "checkpoints" / "last.pt")
    assert stopped["average"]["steps"] == 5
    run_to_end(train(config, image, labels, models_dir=models_dir, resume=True))
    folder = store.folder("avg") / "checkpoints"
    final, best = read_checkpoint(folder / "iter_0000012.pt"), read_checkpoint(folder / "best.pt")
    assert final["average"]["steps"] == 12, "the resumed job counted on from the stopped one's average"
    for name, weights in final["average"]["weights"].items():
        torch.testing.assert_close(best["model"][name], weights)
    assert any(not torch.equal(best["model"][k], final["model"][k]) for k in final["average"]["weights"]), \
        "the best is the average, not the last step's weights"
