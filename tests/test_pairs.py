"""Several image + labels pairs in one job, and trusting only the regions a user corrected."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from napari_plantbio_train import planning
from napari_plantbio_train.planning.plan import DEFAULT_CONTOUR_WIDTH
from napari_plantbio_train.cli import main
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.training.known import touched, within
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.material import prepare
from napari_plantbio_train.training.targets import GAP_REACH
from napari_plantbio_train.training.loop import _squeeze_z, run_to_end, train
from napari_plantbio_train.models.losses import segmentation_loss

TINY = dict(base_channels=4, depth=2, iterations=6, validate_every=6, iteration_save=6, batch_size=2, lr=3e-3)


def _marked_pair(value: int, shape=(1, 96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """An image whose every pixel is `value`, so a window tells which pair it came from."""
    labels = np.zeros(shape, np.uint16)
    labels[:, 20:50, 20:50] = 1
    labels[:, 60:80, 55:90] = 2
    return np.full(shape, value, np.uint8), labels


def test_every_pair_is_sampled_in_its_share():
    pairs = [_marked_pair(v) for v in (10, 100, 200)]
    config = TrainConfig(name="m", mode="instance", dims="2d", window=(32, 32), pair_weights=(1, 2, 0), **TINY)
    material = prepare(config, *pairs[0], previous=None, extra_pairs=pairs[1:])
    assert len(material.extra) == 2 and material.weights == (1.0, 2.0, 0.0)
    sampler = material.sampler(np.random.default_rng(0))
    raw = []
    for _ in range(150):
        x, y, known = sampler.sample(4)
        assert x.shape == (4, 1, 1, 32, 32) and y.shape == (4, 2, 1, 32, 32) and known is None
        raw += [round(float(material.normalisation.low + w.mean() * (material.normalisation.high -
                                                                        material.normalisation.low)), -1)
                for w in x[:, 0]]
    counts = {v: sum(abs(r - v) < 30 for r in raw) for v in (10, 100, 200)}  # jitter moves values a little
    assert counts[200] == 0  # weight 0: never drawn
    assert counts[10] > 100 and counts[100] > 2 * counts[10] * 0.75  # about a third and two thirds of 600


def test_extra_pairs_are_checked_by_field():
    image, labels = _marked_pair(10)
    config = TrainConfig(name="m", mode="instance", dims="2d", window=(32, 32), **TINY)
    with pytest.raises(ConfigError, match=r"extra_labels: pair 2: shape"):
        prepare(config, image, labels, previous=None, extra_pairs=[(image, labels[:, :50])])
    with pytest.raises(ConfigError, match=r"extra_images: pair 2: .* larger than the image"):
        prepare(config, image, labels, previous=None, extra_pairs=[(image[:, 20:44, 20:44], labels[:, 20:44, 20:44])])
    with pytest.raises(ConfigError, match="pair_weights"):
        planning.validate(config.replace(pair_weights=(1.0,), extra_images=("b",), extra_labels=("b",)))


def test_touched_mask_reaches_margin_in_plane_and_scaled_in_z():
    auto = np.zeros((9, 64, 64), np.uint16)
    corrected = auto.copy()
    corrected[4, 30:34, 30:34] = 7  # a painted missed object
    near = touched(corrected, auto, 5, anisotropy=2.5)
    assert near[4, 30:34, 30:34].all() and near[4, 30, 25] and not near[4, 30, 24]
    assert near[6, 31, 31] and not near[7, 31, 31]  # 2 slices at 2.5 pixels each = 5 pixels
    flat = touched(corrected, auto, 5, per_slice=True)
    assert flat[4].any() and not flat[3].any()
    with pytest.raises(ConfigError, match="touched_only: .*identical"):
        touched(auto, auto, 5)


@pytest.mark.parametrize("sampling", [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0), (1e6, 1.0, 1.0)])
@pytest.mark.parametrize("density", [0.0005, 0.02])
def test_within_by_boxes_is_the_whole_stack_distance_transform(sampling, density):
    # Scattered corrections (boxes) and dense ones (the whole-stack fallback) give the exact same mask.
    rng = np.random.default_rng(3)
    mask = ndimage.binary_dilation(rng.random((9, 70, 80)) < density, iterations=1)
    mask[0, 0, 0] = mask[8, 69, 79] = True  # parts at the stack's corners: boxes clipped by its edges
    expected = ndimage.distance_transform_edt(~mask, sampling=sampling) <= 6
    assert np.array_equal(within(mask, 6, sampling), expected)


def _corrected_crop(chloroplast_crop):
    """An auto-label result with one object missed and one false object, and the user's correction of it."""
    image, truth = chloroplast_crop
    auto = truth.copy()
    missed = int(truth[2, 96, 96]) or int(np.bincount(truth.ravel())[1:].argmax() + 1)
    auto[auto == missed] = 0
    auto[:, 5:25, 160:185] = 99  # a false object in the background
    auto[:, 5:25, 160:185][truth[:, 5:25, 160:185] > 0] = truth[:, 5:25, 160:185][truth[:, 5:25, 160:185] > 0]
    corrected = truth.copy()
    return image, corrected, auto


def test_touched_only_puts_nothing_of_the_untouched_area_in_the_loss(chloroplast_crop):
    image, corrected, auto = _corrected_crop(chloroplast_crop)
    config = TrainConfig(name="m", mode="instance", dims="3d", window=(2, 64, 64), touched_only=True,
                         touched_margin=6, voxel_size=(5, 5, 50), **TINY)
    material = prepare(config, image, corrected, previous=None, auto_labels=auto)
    assert material.known is not None and 0 < material.known.mean() < 0.6
    # Scramble the labels wherever the user did not touch (both results alike, so nothing new is "corrected"):
    # windows drawn with the same seed must give exactly the same loss for any network output.
    # (Instance targets mark contours from labels up to GAP_REACH contour widths away in-plane, in a square (the
    # background between two objects: sqrt(2) times that along a diagonal), and one slice away along z, so the
    # scramble keeps that far off along every axis.)
    reach = GAP_REACH * (config.contour_width or DEFAULT_CONTOUR_WIDTH)
    far = ndimage.distance_transform_edt(~material.known) > np.sqrt(2) * reach + 1
    other_corrected, other_auto = corrected.copy(), auto.copy()
    scramble = np.random.default_rng(1).integers(0, 5, corrected.shape).astype(corrected.dtype)
    other_corrected[far], other_auto[far] = scramble[far], scramble[far]
    other = prepare(config, image, other_corrected, previous=None, auto_labels=other_auto)
    assert np.array_equal(other.known, material.known)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    losses = []
    for m in (material, other):
        x, y, known = m.sampler(np.random.default_rng(5)).sample(4)
        assert known is not None and (~known).any()
        with torch.no_grad():
            logits = net(torch.from_numpy(_squeeze_z(x, 3)))
        losses.append(float(segmentation_loss(logits, torch.from_numpy(y).float(), "instance",
                                              torch.from_numpy(known))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    with pytest.raises(ConfigError, match="auto_labels"):
        prepare(config, image, corrected, previous=None)


def test_continue_on_corrected_and_original_pairs_from_the_command_line(chloroplast_crop, tmp_path, models_dir,
                                                                         capsys):
    image, corrected, auto = _corrected_crop(chloroplast_crop)
    files = {}
    for name, array in (("image", image), ("corrected", corrected), ("auto", auto)):
        files[name] = tmp_path / f"{name}.tif"
        tifffile.imwrite(files[name], array)
    first = TrainConfig(name="v1", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50), **TINY)
    run_to_end(train(first, image, auto, models_dir=models_dir))
    args = ["train", "--init-from", "v1", "--name", "v2", "--image", str(files["image"]), "--labels",
            str(files["corrected"]), "--image", str(files["image"]), "--labels", str(files["auto"]),
            "--balance", "3", "1", "--touched-only", str(files["auto"]), "--touched-margin", "8",
            "--iterations", "4", "--validate-every", "4", "--models-dir", str(models_dir), "--quiet"]
    assert main(args, out=io.StringIO()) == 0
    child = ModelStore(models_dir).record("v2")
    assert child.parent == "v1" and child.iterations_done == 4
    assert child.config.extra_labels == (str(files["auto"]),) and child.config.pair_weights == (3.0, 1.0)
    assert child.config.touched_only and child.config.auto_labels == str(files["auto"])
    bad = args[:3] + ["--name", "v3", "--image", str(files["image"]), "--labels", str(files["corrected"]),
                      "--image", str(files["image"])]
    assert main(bad + ["--models-dir", str(models_dir)], out=io.StringIO()) == 2
    assert capsys.readouterr().err.startswith("error: labels: 2 --image but 1 --labels")


def test_a_script_gives_extra_pairs_as_arrays_with_their_shares(models_dir):
    pairs = [_marked_pair(v) for v in (10, 100)]
    config = TrainConfig(name="arrays", mode="instance", dims="2d", window=(32, 32), pair_weights=(3, 1), **TINY)
    run_to_end(train(config, *pairs[0], extra_pairs=pairs[1:], models_dir=models_dir))
    saved = ModelStore(models_dir).record("arrays").config
    assert saved.extra_images == ("pair 2",) and saved.pair_weights == (3.0, 1.0)

