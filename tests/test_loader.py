"""Windows drawn in spawned worker processes: the same kind of batches as in the training thread."""

from __future__ import annotations

import numpy as np
import torch

from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Finished, Progress
from napari_plantbio_train.training.loader import window_batches
from napari_plantbio_train.training.material import prepare
from napari_plantbio_train.training.loop import run_to_end, train

JOB = dict(mode="instance", dims="3d", window=(2, 64, 64), base_channels=4, depth=2, batch_size=2, lr=3e-3,
           voxel_size=(5, 5, 50))


def test_worker_processes_draw_reproducible_batches(chloroplast_crop):
    image, labels = chloroplast_crop
    material = prepare(TrainConfig(name="m", **JOB), image, labels, previous=None)
    pool = material.pool()
    first = [next(window_batches(pool, 3, (7, 0), processes=1)) for _ in range(2)]
    for x, y, known in first:
        assert isinstance(x, torch.Tensor) and x.shape == (3, 1, 2, 64, 64) and x.dtype == torch.float32
        assert y.shape == (3, 2, 2, 64, 64) and known is None
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])  # same seed
    in_thread = next(window_batches(pool, 3, (7, 0), processes=0))
    assert in_thread[0].shape == first[0][0].shape
    assert not torch.equal(in_thread[0], first[0][0])  # each worker has its own stream
    other_seed = next(window_batches(pool, 3, (8, 0), processes=1))
    assert not torch.equal(other_seed[0], first[0][0])


def test_training_with_a_window_process(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    config = TrainConfig(name="loaded", data_workers=1, iterations=6, validate_every=6, iteration_save=6, **JOB)
    events = run_to_end(train(config, image, labels, models_dir=models_dir))[1]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.iteration for p in progress] == list(range(1, 7))
    assert all(np.isfinite(p.loss) for p in progress)
    assert isinstance(events[-1], Finished) and events[-1].reason == "completed"
