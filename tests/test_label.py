"""Auto-labelling with named models: whole stacks, blocks, dask/zarr/TIFF, clusters, cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import chloroplast_stack
import tifffile
import torch
from scipy import ndimage

from napari_plantbio_train.inference import blockwise
from napari_plantbio_train.job.config import ConfigError
from napari_plantbio_train.job.events import LabelFinished, LabelProgress, LabelStarted
from napari_plantbio_train.inference.label import LabelSettings, label_stack, run_to_end
from napari_plantbio_train.evaluation.metrics import match_instances
from napari_plantbio_train.inference.postprocess import instances_from_maps, params_from_truth
from napari_plantbio_train.inference.sliding import with_tta
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.targets import instance_targets

TINY = dict(base_channels=4, depth=2, iterations=20, validate_every=20, iteration_save=20, batch_size=2, lr=3e-3)
FP32 = dict(precision="fp32")


@pytest.fixture
def trained(tiny_models) -> Path:
    return tiny_models


def _low_threshold(root, name, image) -> dict[str, float]:
    """Watershed thresholds low enough that a 20-iteration model finds objects (what this test needs)."""
    result, _ = run_to_end(label_stack(name, image, models_dir=root, probabilities=True,
                                       settings=LabelSettings(**FP32)))
    fg = result.probabilities[0]
    level = float(np.quantile(fg, 0.7))
    return {"fg_threshold": level, "seed_threshold": max(0.0, level - float(np.quantile(result.probabilities[1], 0.5))),
            "min_size": 16, "min_seed_size": 4}


def test_instance_3d_result_matches_the_input(trained, chloroplast_crop):
    image, _ = chloroplast_crop
    result, events = run_to_end(label_stack("chl", image, models_dir=trained, settings=LabelSettings(**FP32)))
    assert result.labels.shape == image.shape and result.labels.dtype == np.uint32
    assert isinstance(events[0], LabelStarted) and events[0].blocks == 1
    progress = [e for e in events if isinstance(e, LabelProgress)]
    assert progress[-1].windows_done == progress[-1].windows == events[0].windows
    assert isinstance(events[-1], LabelFinished) and not events[-1].cancelled
    ids = np.unique(result.labels)
    assert result.objects == ids.size - 1 and np.array_equal(ids, np.arange(ids.size))


def test_blocks_give_the_whole_stack_result(trained, chloroplast_crop):
    image, _ = chloroplast_crop
    post = _low_threshold(trained, "chl", image)
    whole, _ = run_to_end(label_stack("chl", image, models_dir=trained, probabilities=True,
                                      settings=LabelSettings(postprocess=post, **FP32)))
    blocks, events = run_to_end(label_stack("chl", image, models_dir=trained, probabilities=True,
                                            settings=LabelSettings(postprocess=post, block_voxels=60_000,
                                                                   **FP32)))
    assert events[0].blocks > 4
    # The reach of each block is the whole-stack window grid: probabilities agree to rounding.
    np.testing.assert_allclose(blocks.probabilities, whole.probabilities, atol=1e-5)
    assert whole.objects > 3
    ids = np.unique(blocks.labels)
    assert np.array_equal(ids, np.arange(ids.size))  # one consecutive numbering across blocks


def test_a_semantic_confidence_floor_judges_regions_alike_in_blocks(trained, plate_crop):
    """With a floor, a semantic block sees regions cut by its edge through a halo, as instance blocks do."""
    image = plate_crop[0]
    plain, _ = run_to_end(label_stack("plate", image, models_dir=trained, probabilities=True,
                                      settings=LabelSettings(postprocess={"min_confidence": 0.0}, **FP32)))
    regions, n = ndimage.label(plain.labels == 3)
    means = ndimage.mean(plain.probabilities[1], regions, np.arange(1, n + 1))
    assert n >= 2, "the tiny model finds regions to judge"
    floor = float(np.sort(means)[n // 2])  # about half of the regions fall below it
    post = {"min_confidence": floor}
    whole, _ = run_to_end(label_stack("plate", image, models_dir=trained, settings=LabelSettings(postprocess=post,
                                                                                                **FP32)))
    blocks, events = run_to_end(label_stack("plate", image, models_dir=trained,
                                            settings=LabelSettings(postprocess=post, block_voxels=20_000, **FP32)))
    assert events[0].blocks > 2
    assert 0 < (whole.labels == 3).sum() < (plain.labels == 3).sum()
    np.testing.assert_array_equal(blocks.labels, whole.labels)


def test_blocks_split_real_chloroplasts_as_the_whole_stack_does():
    """Perfect foreground/contour maps of real chloroplasts (or of synthetic touching organelles), post-processed
    block by block with the default halo, give the same objects as the whole stack (and as the truth)."""
    truth = chloroplast_stack((slice(None), slice(1000, 1600), slice(1000, 1600)))[1]
    maps = instance_targets(truth, per_slice=False, contour_width=4).astype(np.float32)
    settings = params_from_truth(truth, per_slice=False, anisotropy=10.0)
    whole = instances_from_maps(maps[0], maps[1], per_slice=False, **settings)
    window = (4, 256, 256)
    blocks = blockwise.plan_blocks(truth.shape, window, 0.5, (2, 128, 128), max_voxels=2_000_000)
    assert len(blocks) >= 4
    beside = blockwise.neighbours(blocks)
    out = np.zeros(truth.shape, np.uint32)
    results = {}
    for block in blocks:
        context = blockwise.Block.region(block.context)
        labels = instances_from_maps(maps[0][context], maps[1][context], per_slice=False, **settings)
        results[block.index] = blockwise.store_labels(block, labels, out, beside[block.index],
                                                      instance=True)
    assert blockwise.join_ids(blocks, results, out) == whole.max()
    assert match_instances(out, whole, 0.5)["f1"] == 1.0
    assert match_instances(out, truth, 0.5)["f1"] == 1.0


def test_join_links_objects_cut_by_block_edges():
    """Disks segmented block by block (by connected components of each context) join into the global ones."""
    yy, xx = np.mgrid[:120, :150]
    mask = np.zeros((1, 120, 150), bool)
    rng = np.random.default_rng(3)
    for cy, cx in rng.integers(10, 140, size=(14, 2)):
        mask[0] |= (yy - min(cy, 110)) ** 2 + (xx - cx) ** 2 < 9 ** 2
    truth = ndimage.label(mask)[0]
    blocks = blockwise.plan_blocks(mask.shape, (1, 16, 16), 0.5, (0, 8, 8), max_voxels=40 * 40)
    assert len(blocks) >= 9
    beside = blockwise.neighbours(blocks)
    out = np.zeros(mask.shape, np.uint32)
    results = {}
    for block in blocks:
        context = ndimage.label(mask[blockwise.Block.region(block.context)])[0]
        results[block.index] = blockwise.store_labels(block, context, out, beside[block.index],
                                                      instance=True)
    count = blockwise.join_ids(blocks, results, out)
    assert count == truth.max()
    assert match_instances(out, truth, 0.99)["f1"] == 1.0


def test_blocks_around_regions_tile_the_stack_and_join_like_a_grid():
    # A round's layout: cores follow the boxes of the regions exactly, the rest of the stack is tiled by far
    # blocks, and objects cut by any core face (near or far, of any size) still join into the global ones.
    yy, xx = np.mgrid[:120, :150]
    mask = np.zeros((3, 120, 150), bool)
    rng = np.random.default_rng(5)
    for cy, cx in rng.integers(10, 140, size=(14, 2)):
        mask[:] |= (yy - min(cy, 110)) ** 2 + (xx - cx) ** 2 < 9 ** 2
    truth = ndimage.label(mask)[0]
    regions = [((0, 3), (10, 40), (20, 70)), ((1, 3), (30, 60), (60, 90)), ((0, 3), (90, 130), (120, 160))]
    near, far = blockwise.plan_around(mask.shape, (2, 16, 16), 0.5, (1, 8, 8), 40 * 40 * 3, regions)
    cover = np.zeros(mask.shape, int)
    in_near = np.zeros(mask.shape, bool)
    for block in near + far:
        cover[blockwise.Block.region(block.core)] += 1
    for block in near:
        in_near[blockwise.Block.region(block.core)] = True
    wanted = np.zeros(mask.shape, bool)
    for region in regions:
        wanted[tuple(slice(a, b) for a, b in region)] = True
    assert (cover == 1).all(), "cores tile the stack, none twice"
    assert np.array_equal(in_near, wanted), "the near cores are the regions' boxes, no more"
    blocks = near + far
    beside = blockwise.neighbours(blocks)
    out = np.zeros(mask.shape, np.uint32)
    results = {}
    for block in blocks:
        context = ndimage.label(mask[blockwise.Block.region(block.context)])[0]
        results[block.index] = blockwise.store_labels(block, context, out, beside[block.index], instance=True)
    assert blockwise.join_ids(blocks, results, out) == truth.max()
    assert match_instances(out, truth, 0.99)["f1"] == 1.0


def test_semantic_2d_uses_the_label_values(trained, plate_crop):
    image, labels = plate_crop
    result, _ = run_to_end(label_stack("plate", image, models_dir=trained, settings=LabelSettings(**FP32)))
    assert result.labels.shape == image.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 3}


def test_2d_model_labels_a_stack_slice_by_slice(trained, plate_crop):
    image, _ = plate_crop
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    result, _ = run_to_end(label_stack("plate", stack, models_dir=trained, settings=LabelSettings(**FP32)))
    assert result.labels.shape == stack.shape
    for z in range(3):
        alone, _ = run_to_end(label_stack("plate", stack[z], models_dir=trained, settings=LabelSettings(**FP32)))
        np.testing.assert_array_equal(result.labels[z], alone.labels)


def test_3d_model_refuses_a_2d_image(trained, plate_crop):
    with pytest.raises(ConfigError, match="3D model") as info:
        run_to_end(label_stack("chl", plate_crop[0], models_dir=trained))
    assert info.value.field == "image"


@pytest.mark.parametrize("settings, field", [(dict(overlap=1.0), "overlap"), (dict(tta=3), "tta"),
                                             (dict(batch_size=0), "batch_size"), (dict(precision="fp8"), "precision"),
                                             (dict(postprocess={"min_size": -1}), "min_size"),
                                             (dict(postprocess={"bogus": 1}), "bogus"),
                                             (dict(postprocess={"min_confidence": 1.5}), "min_confidence")])
def test_bad_settings_name_the_field(trained, chloroplast_crop, settings, field):
    with pytest.raises(ConfigError) as info:
        run_to_end(label_stack("chl", chloroplast_crop[0], models_dir=trained, settings=LabelSettings(**settings)))
    assert info.value.field == field


def test_dask_input_and_zarr_and_tiff_outputs_agree(trained, chloroplast_crop, tmp_path):
    import dask.array as da
    import zarr

    image, _ = chloroplast_crop
    settings = LabelSettings(postprocess=_low_threshold(trained, "chl", image), block_voxels=80_000, **FP32)
    reference, _ = run_to_end(label_stack("chl", image, models_dir=trained, settings=settings))
    lazy = da.from_array(image, chunks=(2, 64, 64))
    to_zarr, _ = run_to_end(label_stack("chl", lazy, models_dir=trained, output=tmp_path / "out.zarr",
                                        settings=settings))
    np.testing.assert_array_equal(zarr.open_array(str(to_zarr.labels), mode="r")[:], reference.labels)
    to_tif, _ = run_to_end(label_stack("chl", lazy, models_dir=trained, output=tmp_path / "out.tif",
                                       settings=settings))
    with tifffile.TiffFile(to_tif.labels) as tif:
        np.testing.assert_array_equal(tif.asarray(), reference.labels)
        assert tif.shaped_metadata[0]["voxel_size_nm"] == [5.0, 5.0, 50.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out.zarr"]  # no temporary files left
    with pytest.raises(FileExistsError, match="already exists"):
        run_to_end(label_stack("chl", lazy, models_dir=trained, output=tmp_path / "out.tif", settings=settings))


def test_cancel_mid_way_leaves_no_output(trained, chloroplast_crop, tmp_path):
    image, _ = chloroplast_crop
    stop = threading.Event()
    events = label_stack("chl", image, models_dir=trained, output=tmp_path / "out.zarr", stop=stop,
                         settings=LabelSettings(block_voxels=60_000, **FP32))
    seen = []
    for event in events:
        seen.append(event)
        if isinstance(event, LabelProgress):
            stop.set()
    assert isinstance(seen[-1], LabelFinished) and seen[-1].cancelled
    assert list(tmp_path.iterdir()) == []
    assert seen[-2].windows_done < seen[-2].windows


def test_constant_model_gives_a_seamless_constant_result(trained, chloroplast_crop, tmp_path):
    """Zero the last layer: every window predicts the same value, so any seam would come from blending."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(trained / "chl", root / "chl")
    store = ModelStore(root)
    record = store.record("chl")
    state = store.load_checkpoint(record)
    state["model"]["head.conv.weight"].zero_()
    state["model"]["head.bias"].copy_(torch.tensor([0.7, -1.2]))
    torch.save(state, record.folder / record.best)
    image, _ = chloroplast_crop
    result, _ = run_to_end(label_stack("chl", image, models_dir=root, probabilities=True,
                                       settings=LabelSettings(block_voxels=60_000, tta=8, **FP32)))
    expected = torch.sigmoid(torch.tensor([0.7, -1.2])).numpy()
    np.testing.assert_allclose(result.probabilities, np.broadcast_to(expected[:, None, None, None],
                                                                      result.probabilities.shape), atol=1e-6)


def test_tta_averages_flips_and_maps_them_back():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    assert torch.equal(with_tta(lambda t: 2 * t, 8, (4, 4))(x), 2 * x)  # equivariant: unchanged
    ramp = torch.arange(4, dtype=torch.float32)

    def sees_position(t: torch.Tensor) -> torch.Tensor:  # not equivariant: output depends on x position only
        return ramp.expand_as(t).clone()

    averaged = with_tta(sees_position, 4, (4, 4))(x)
    assert torch.allclose(averaged, torch.full_like(x, 1.5))  # the flipped ramps average to the mean
    with pytest.raises(ValueError, match="square"):
        with_tta(sees_position, 8, (4, 8))


def test_dask_distributed_cluster_runs_the_blocks(trained, chloroplast_crop, tmp_path):
    distributed = pytest.importorskip("distributed")
    import zarr

    image, _ = chloroplast_crop
    settings = dict(postprocess=_low_threshold(trained, "chl", image), block_voxels=80_000, **FP32)
    reference, _ = run_to_end(label_stack("chl", image, models_dir=trained, settings=LabelSettings(**settings)))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result, events = run_to_end(label_stack("chl", image, models_dir=trained, output=tmp_path / "c.zarr",
                                                settings=LabelSettings(scheduler=cluster.scheduler_address,
                                                                       **settings)))
    assert events[0].blocks > 1
    np.testing.assert_array_equal(zarr.open_array(str(result.labels), mode="r")[:], reference.labels)
    with pytest.raises(ConfigError, match="file the workers can reach"):
        run_to_end(label_stack("chl", image, models_dir=trained, settings=LabelSettings(scheduler="tcp://x:1")))
