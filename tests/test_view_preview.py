"""Predictions where the user looks: the region a view asks for, its budget, its request file, and the training
loop answering in-process and through the wire."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_plantbio_train.io.synthetic import make_stack
from napari_plantbio_train.io.wire import event_from_record, event_record
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Progress, Validation, ViewPreview
from napari_plantbio_train.training.loop import run_to_end, train
from napari_plantbio_train.training.view import (ViewBox, ViewFile, ViewRequest, next_budget, smallest_view,
                                                 view_file, view_region, write_view_request)


def _voxels(region) -> int:
    return math.prod(b - a for a, b in region)


def test_a_2d_job_views_the_current_slice_centred_within_the_budget():
    region = view_region(ViewRequest(z=7, y=300.0, x=400.0), (20, 1000, 1000), (64, 64), budget=200 * 200)
    (z0, z1), (y0, y1), (x0, x1) = region
    assert (z0, z1) == (7, 8)
    assert _voxels(region) <= 200 * 200
    assert abs((y0 + y1) / 2 - 300) <= 1 and abs((x0 + x1) / 2 - 400) <= 1


def test_a_3d_job_views_a_window_deep_slab_around_z_clipped_to_the_stack():
    shape = (30, 500, 500)
    (z0, z1), (y0, y1), (x0, x1) = view_region(ViewRequest(z=15, y=250, x=250), shape, (8, 64, 64), 8 * 128 * 128)
    assert (z0, z1) == (11, 19) and z0 <= 15 < z1
    assert (y1 - y0) * (x1 - x0) <= 128 * 128
    # At the stack's corner the region slides inside instead of shrinking.
    region = view_region(ViewRequest(z=29, y=499, x=-40), shape, (8, 64, 64), 8 * 128 * 128)
    (z0, z1), (y0, y1), (x0, x1) = region
    assert z1 == 30 and z1 - z0 == 8 and y1 == 500 and x0 == 0
    assert _voxels(region) == _voxels(view_region(ViewRequest(15, 250, 250), shape, (8, 64, 64), 8 * 128 * 128))


def test_a_region_is_never_smaller_than_a_window_nor_larger_than_the_stack():
    tiny_budget = view_region(ViewRequest(0, 50, 50), (4, 100, 100), (64, 64), budget=10)
    assert [b - a for a, b in tiny_budget] == [1, 64, 64]
    small_stack = view_region(ViewRequest(2, 10, 10), (3, 40, 50), (4, 64, 64), budget=10 ** 9)
    assert small_stack == ((0, 3), (0, 40), (0, 50))
    assert smallest_view((3, 40, 50), (4, 64, 64)) == 3 * 40 * 50


def test_a_narrow_stack_gives_its_unused_width_to_the_height():
    (_, _), (y0, y1), (x0, x1) = view_region(ViewRequest(0, 500, 20), (1, 1000, 40), (32, 32), budget=40 * 400)
    assert x1 - x0 == 40 and y1 - y0 == 400


def test_the_budget_follows_the_measured_speed_between_a_window_and_the_ceiling():
    # 100 000 voxels in 2 s, 1 s allowed: half as many next time.
    assert next_budget(100_000, 2.0, 1.0, floor=4096, ceiling=10 ** 6) == 50_000
    assert next_budget(100_000, 2.0, 0.001, floor=4096, ceiling=10 ** 6) == 4096
    assert next_budget(100_000, 0.01, 10.0, floor=4096, ceiling=10 ** 6) == 10 ** 6


def test_the_request_file_is_read_when_it_changes_and_cleared_for_a_new_job(tmp_path):
    source = ViewFile(tmp_path)
    assert source.latest() is None
    write_view_request(tmp_path, ViewRequest(3, 10.5, 20.0, asked=1))
    assert source.latest() == ViewRequest(3, 10.5, 20.0, 1)
    assert json.loads(view_file(tmp_path).read_text()) == {"z": 3, "y": 10.5, "x": 20.0, "asked": 1,
                                                             "live": True}
    view_file(tmp_path).write_text("{not json")
    assert source.latest() == ViewRequest(3, 10.5, 20.0, 1)  # a broken file keeps the last good request
    source.clear()
    assert not view_file(tmp_path).exists() and source.latest() is None


def test_a_view_preview_crosses_the_wire_beside_the_validation_preview(tmp_path):
    previews = tmp_path / "previews"
    event = ViewPreview(5, np.random.rand(2, 1, 8, 8).astype(np.float32), np.arange(64, dtype=np.uint32).reshape(1, 8, 8),
                        (2, 3, 4), ("foreground", "contour"), 0.25)
    back = event_from_record(json.loads(json.dumps(event_record(event, previews))))
    assert isinstance(back, ViewPreview) and back.offset == (2, 3, 4) and back.seconds == 0.25
    np.testing.assert_array_equal(back.probabilities, event.probabilities)
    np.testing.assert_array_equal(back.labels, event.labels)
    for iteration in (6, 7, 8):  # the kept files are counted per kind
        event_record(ViewPreview(iteration, event.probabilities, event.labels, (0, 0, 0), (), 0.1), previews)
    names = sorted(p.name for p in previews.glob("*.npy"))
    assert names == [f"iter_000000{i}_view_{k}.npy" for i in (7, 8) for k in ("labels", "probabilities")]


@pytest.fixture(scope="module")
def stack():
    return make_stack((6, 96, 96), seed=2)


def test_the_loop_predicts_where_asked_at_validations_and_on_request(stack, tmp_path):
    config = TrainConfig(name="view", mode="semantic", dims="2d", window=(32, 32), base_channels=4, depth=2,
                         iterations=9, validate_every=4, iteration_save=100, batch_size=1, workers=1)
    box = ViewBox(ViewRequest(z=1, y=48, x=48))
    events = train(config, stack.image, stack.semantic, models_dir=tmp_path, view=box)
    seen = []
    for event in events:
        seen.append(event)
        if isinstance(event, Progress) and event.iteration == 5:
            box.set(ViewRequest(z=4, y=10, x=90, asked=1))  # the user moved and pressed "Preview here"
    views = [e for e in seen if isinstance(e, ViewPreview)]
    # At validations 4 and 8, at the last iteration, and once for the press (seen at iteration 5's end).
    assert [v.iteration for v in views] == [4, 5, 8, 9]
    first, asked = views[0], views[1]
    assert first.offset[0] == 1 and asked.offset[0] == 4
    assert asked.offset[1] == 0 and asked.offset[2] + asked.labels.shape[2] == 96  # slid inside at the corner
    for view in views:
        assert view.labels.shape == view.probabilities.shape[1:] and view.labels.shape[0] == 1
        assert set(np.unique(view.labels)) <= set(np.unique(stack.semantic))
        assert 0.0 <= view.probabilities.min() and view.probabilities.max() <= 1.0 and view.seconds > 0


def test_without_a_request_the_loop_predicts_nothing_extra(stack, tmp_path):
    config = TrainConfig(name="none", mode="semantic", dims="2d", window=(32, 32), base_channels=4, depth=2,
                         iterations=2, validate_every=2, iteration_save=100, batch_size=1, workers=1)
    _, events = run_to_end(train(config, stack.image, stack.semantic, models_dir=tmp_path))
    assert not [e for e in events if isinstance(e, ViewPreview)]
    write_view_request(tmp_path / "none", ViewRequest(0, 0, 0))  # the first job's: removed when the next starts
    _, events = run_to_end(train(config.replace(iterations=4), stack.image, stack.semantic, models_dir=tmp_path,
                                 resume=True))
    assert [e.iteration for e in events if isinstance(e, Progress)] == [3, 4]
    assert not [e for e in events if isinstance(e, ViewPreview)]


def test_with_live_previews_off_the_loop_predicts_only_when_asked(stack, tmp_path):
    config = TrainConfig(name="quiet", mode="semantic", dims="2d", window=(32, 32), base_channels=4, depth=2,
                         iterations=9, validate_every=4, iteration_save=100, batch_size=1, workers=1)
    box = ViewBox(ViewRequest(z=1, y=48, x=48, live=False))
    seen = []
    for event in train(config, stack.image, stack.semantic, models_dir=tmp_path, view=box):
        seen.append(event)
        if isinstance(event, Progress) and event.iteration == 5:
            box.set(ViewRequest(z=2, y=48, x=48, asked=1, live=False))  # "Preview here", live previews off
    views = [e for e in seen if isinstance(e, ViewPreview)]
    assert [v.iteration for v in views] == [5] and views[0].offset[0] == 2
    assert [e.iteration for e in seen if isinstance(e, Validation)] == [4, 8, 9], "validations go on as before"
