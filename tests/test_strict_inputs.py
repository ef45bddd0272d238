"""predict and evaluate as strict as train: every wrong input is one line naming it, before any work, and
nothing is left on disk; messages that used to mislead say what is wrong."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_plantbio_train.cli import main
from napari_plantbio_train.io.arrays import partial_path
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.planning import problems
from napari_plantbio_train.planning.window import smallest_image
from napari_plantbio_train.training.loop import train

TINY = dict(base_channels=4, depth=2, iterations=2, validate_every=2, iteration_save=2, batch_size=1, workers=1)


def _predict(tiny_models, image, output, *extra):
    return ["predict", "--model", "chl", "--image", str(image), "--output", str(output), "--models-dir",
            str(tiny_models), "--quiet", *extra]


def _one_line(capsys, starts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {starts}"), err
    return err


@pytest.fixture
def clean_image(tmp_path, chloroplast_crop):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, chloroplast_crop[0][:, :64, :64].astype(np.float32), photometric="minisblack")
    return path


def test_nan_is_refused_and_nothing_is_written(tiny_models, tmp_path, chloroplast_crop, capsys):
    image = chloroplast_crop[0][:, :64, :64].astype(np.float32)
    image[1, 10:20, 10:20] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    output = tmp_path / "out.tif"
    assert main(_predict(tiny_models, path, output)) == 2
    assert "NaN" in _one_line(capsys, "image: ")
    assert list(tmp_path.iterdir()) == [path]  # neither the result nor a partial one


def test_nan_is_refused_by_train_with_the_same_words(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    image = image.astype(np.float32)
    image[0, 0, 0] = np.nan  # one pixel: a sample of the stack could miss it
    with pytest.raises(ConfigError, match="^image: contains NaN or infinite values"):
        next(train(TrainConfig(name="nan", mode="instance", dims="2d", window=(64, 64), **TINY), image, labels,
                   models_dir=models_dir))


@pytest.mark.parametrize("shape, dtype, words", [
    ((256, 256, 3), np.uint8, "looks like an RGB colour image"),
    ((2, 3, 64, 64), np.uint8, "is not a single-channel 2D image or 3D stack"),
    ((0, 64, 64), np.uint8, "the image is empty"),
])
def test_colour_4d_and_empty_images_are_one_line_before_the_model_loads(tiny_models, tmp_path, capsys, shape,
                                                                          dtype, words):
    path = tmp_path / "in.npy"
    np.save(path, np.zeros(shape, dtype))
    assert main(_predict(tiny_models, path, tmp_path / "out.zarr")) == 2
    assert words in _one_line(capsys, "image: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_train_reads_colour_by_the_same_rule(models_dir):
    rgb = np.zeros((256, 256, 3), np.uint8)
    config = TrainConfig(name="rgb", mode="semantic", dims="2d", **TINY)
    with pytest.raises(ConfigError, match="^image: looks like an RGB colour image"):
        next(train(config, rgb, np.zeros((256, 256), np.uint8), models_dir=models_dir))


def test_a_truncated_tiff_is_one_line(tiny_models, tmp_path, chloroplast_crop, capsys):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, chloroplast_crop[0][:, :64, :64], compression="zlib", photometric="minisblack")
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert main(_predict(tiny_models, cut, tmp_path / "out.zarr")) == 2
    assert "truncated or damaged" in _one_line(capsys, "image: ")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out"])
def test_a_bad_output_name_is_refused_before_any_work(tmp_path, capsys, clean_image, name):
    # The models folder does not even exist: the output is checked first, so this is the line that comes.
    args = _predict(tmp_path / "no-models", clean_image, tmp_path / name)
    assert main(args) == 2
    err = _one_line(capsys, "output: ")
    assert ".zarr, .tif or .tiff" in err
    probabilities = [*_predict(tmp_path / "no-models", clean_image, tmp_path / "o.zarr"), "--probabilities",
                     str(tmp_path / "p.png")]
    assert main(probabilities) == 2
    assert ".zarr, .tif or .tiff" in _one_line(capsys, "probabilities: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif"]


def test_stale_partials_of_the_same_output_are_removed(tiny_models, tmp_path, clean_image):
    output = tmp_path / "out.tif"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = partial_path(output, int(gone.stdout))
    stale.mkdir()
    (stale / "chunk").write_bytes(b"0")
    alive = partial_path(output, os.getppid())  # a process that is running: its partial is not ours to remove
    alive.mkdir()
    other = partial_path(tmp_path / "other.tif", int(gone.stdout))  # another output's
    other.mkdir()
    assert main(_predict(tiny_models, clean_image, output), out=io.StringIO()) == 0
    assert output.exists() and not stale.exists()
    assert alive.exists() and other.exists()


def test_evaluate_warns_when_the_labels_look_like_the_other_mode(tmp_path, chloroplast_crop, plate_crop, capsys):
    instances = tmp_path / "instances.npy"
    np.save(instances, chloroplast_crop[1])
    assert main(["evaluate", "--prediction", str(instances), "--truth", str(instances), "--mode", "semantic"],
                out=io.StringIO()) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "--mode instance" in err and err.count("\n") == 1

    classes = tmp_path / "classes.npy"
    np.save(classes, plate_crop[1])
    out = io.StringIO()
    assert main(["evaluate", "--prediction", str(classes), "--truth", str(classes), "--mode", "instance"],
                out=out) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "--mode semantic" in err and "class values" in err
    assert out.getvalue().startswith("{")  # the scores are still given, as JSON alone on stdout

    for mode, labels in (("semantic", classes), ("instance", instances)):
        assert main(["evaluate", "--prediction", str(labels), "--truth", str(labels), "--mode", mode],
                    out=io.StringIO()) == 0
        assert capsys.readouterr().err == ""  # the right mode: no word


# ----- messages that misled ---------------------------------------------------------------------------------------
def test_window_zero_says_at_least_one_on_the_command_line(tmp_path, clean_image, capsys):
    assert main(["train", "--image", str(clean_image), "--labels", str(clean_image), "--mode", "semantic",
                 "--dims", "2d", "--name", "zero", "--window", "0,0", "--models-dir", str(tmp_path)]) == 2
    assert "each at least 1" in _one_line(capsys, "window: ")


@pytest.mark.parametrize("shape", [(1, 1), (0, 0), (6, 3), (7, 7)])
def test_a_tiny_or_empty_image_is_blamed_not_the_window(shape):
    config = TrainConfig(name="small", mode="semantic", dims="2d", base_channels=4, depth=2)
    found = problems(config, image_shape=shape, labels_shape=shape)
    assert [p.field for p in found] == ["image"]
    if 0 in shape:
        assert "the image is empty" in found[0].message
    else:
        y, x = smallest_image(config, shape)
        assert "too small to train on" in found[0].message and f"{y} x {x}" in found[0].message
        assert not problems(config, image_shape=(y, x), labels_shape=(y, x))  # and that size does train


def test_the_smallest_image_named_trains(plate_crop, models_dir):
    config = TrainConfig(name="least", mode="semantic", dims="2d", **TINY)
    y, x = smallest_image(config, (1, 1))
    image = np.asarray(plate_crop[0])[:y, :x]
    labels = np.zeros((y, x), np.uint8)
    labels[: y // 2] = 1
    events = list(train(config, image, labels, models_dir=models_dir))
    assert events[-1].reason == "completed"


def test_a_stack_of_no_slices_is_called_empty_in_3d():
    config = TrainConfig(name="none", mode="semantic", dims="3d")
    found = problems(config, image_shape=(0, 64, 64), labels_shape=(0, 64, 64))
    assert found[0].field == "image" and "empty" in found[0].message and "2D slice" not in found[0].message


def test_an_invalid_name_says_the_rule(tmp_path, clean_image, capsys):
    for args in (["train", "--image", str(clean_image), "--labels", str(clean_image), "--mode", "semantic",
                  "--dims", "2d", "--name", "bad/name", "--models-dir", str(tmp_path)],
                 ["predict", "--model", "../up", "--image", str(clean_image), "--output", str(tmp_path / "o.zarr"),
                  "--models-dir", str(tmp_path)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "1-64 letters, digits, '.', '_' or '-'" in err, err
