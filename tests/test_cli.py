"""The command line: same engine, same model folders, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_plantbio_train.cli import main
from napari_plantbio_train.models.store import ModelStore


@pytest.fixture
def stack_files(tmp_path, chloroplast_crop):
    image, labels = chloroplast_crop
    image_path, labels_path = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(image_path, image, compression="lzw")  # lab files are often LZW-compressed
    tifffile.imwrite(labels_path, labels, compression="zlib")
    return image_path, labels_path


def _train_args(image, labels, models_dir, name="cli-model", *extra):
    return ["train", "--image", str(image), "--labels", str(labels), "--mode", "instance", "--dims", "3d",
            "--name", name, "--voxel-size", "5", "5", "50", "--window", "2,64,64", "--gpus", "0",
            "--workers", "2", "--lr", "0.002", "--iteration-step", "2", "--iteration-save", "4",
            "--iterations", "6", "--batch-size", "1", "--validate-every", "3", "--base-channels", "4",
            "--depth", "2", "--models-dir", str(models_dir), *extra]


def test_train_then_list_then_resume(stack_files, models_dir):
    out = io.StringIO()
    assert main(_train_args(*stack_files, models_dir), out=out) == 0
    text = out.getvalue()
    assert "validation score" in text and "finished (completed) at iteration 6" in text
    record = ModelStore(models_dir).record("cli-model")
    assert record.config.iteration_step == 2 and record.config.voxel_size == (5.0, 5.0, 50.0)
    assert record.iterations_done == 6

    listing = io.StringIO()
    assert main(["models", "--models-dir", str(models_dir), "--json"], out=listing) == 0
    row = json.loads(listing.getvalue().splitlines()[0])
    assert row["name"] == "cli-model" and row["mode"] == "instance" and row["iterations"] == 6

    again = io.StringIO()
    resume = ["train", "--name", "cli-model", "--resume", "--iterations", "8", "--models-dir", str(models_dir),
              "--quiet"]
    assert main(resume, out=again) == 0
    assert "from iteration 6" in again.getvalue()
    assert ModelStore(models_dir).record("cli-model").iterations_done == 8


@pytest.mark.parametrize("extra,field", [(["--window", "2,66,64"], "window"), (["--lr", "-1"], "lr"),
                                         (["--batch-size", "0"], "batch_size"), (["--gpus", "99"], "gpus")])
def test_bad_value_is_one_line_naming_the_field(stack_files, models_dir, extra, field):
    args = [sys.executable, "-m", "napari_plantbio_train.cli", *_train_args(*stack_files, models_dir, "bad"),
            *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), done.stderr
    assert "Traceback" not in done.stderr
    assert not (models_dir / "bad").exists()


def test_missing_file_is_one_line(tmp_path, models_dir, capsys):
    args = _train_args(tmp_path / "nope.tif", tmp_path / "nope2.tif", models_dir)
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_models_listing_when_empty(models_dir):
    out = io.StringIO()
    assert main(["models", "--models-dir", str(models_dir)], out=out) == 0
    assert "no models" in out.getvalue()


def test_predict_then_evaluate(stack_files, models_dir, tmp_path, capsys):
    image, labels = stack_files
    assert main(_train_args(image, labels, models_dir, "cli-label", "--quiet"), out=io.StringIO()) == 0
    output = tmp_path / "result.tif"
    out = io.StringIO()
    args = ["predict", "--model", "cli-label", "--image", str(image), "--output", str(output), "--overlap", "0.25",
            "--tta", "4", "--batch-size", "2", "--models-dir", str(models_dir), "--min-size", "8",
            "--uncertainty", str(tmp_path / "doubt.zarr")]
    assert main(args, out=out) == 0
    import zarr

    doubt = zarr.open_array(str(tmp_path / "doubt.zarr"), mode="r")
    assert doubt.shape == tifffile.imread(image).shape and 0 <= float(doubt[:].min()) <= float(doubt[:].max()) <= 1
    assert f"wrote {output}" in out.getvalue()
    result = tifffile.imread(output)
    assert result.shape == tifffile.imread(image).shape and result.dtype == np.uint32

    assert main(args, out=io.StringIO()) == 2  # the outputs exist: refused, not overwritten
    assert "already exists" in capsys.readouterr().err

    scores = io.StringIO()
    csv_path = tmp_path / "scores.csv"
    assert main(["evaluate", "--prediction", str(labels), "--truth", str(labels), "--csv", str(csv_path)],
                out=scores) == 0
    report = json.loads(scores.getvalue())
    assert report["f1_50"] == 1.0 and report["ap_75"] == 1.0 and report["count_difference"] == 0
    assert csv_path.read_text().startswith("metric,value")

    judged = io.StringIO()
    assert main(["evaluate", "--prediction", str(output), "--truth", str(labels)], out=judged) == 0
    assert json.loads(judged.getvalue())["n_true"] == len(np.unique(tifffile.imread(labels))) - 1
    assert main(["evaluate", "--prediction", str(labels), "--truth", str(labels), "--objects",
                 str(tmp_path / "objects.csv"), "--voxel-size", "5", "5", "50"], out=io.StringIO()) == 0
    assert (tmp_path / "objects.csv").read_text().startswith("id,voxels,volume_nm3")


def test_predict_errors_are_one_line(stack_files, models_dir, tmp_path, capsys):
    image, _ = stack_files
    assert main(["predict", "--model", "nobody", "--image", str(image), "--output", str(tmp_path / "o.zarr"),
                 "--models-dir", str(models_dir)]) == 2
    assert "no complete model named 'nobody'" in capsys.readouterr().err
    assert main(["evaluate", "--prediction", str(image), "--truth", str(tmp_path / "none.tif")]) == 2
    assert capsys.readouterr().err.startswith("error: truth: ")


def test_init_from_continues_a_model_as_a_new_version(stack_files, models_dir):
    image, labels = stack_files
    assert main(_train_args(image, labels, models_dir, "first", "--quiet"), out=io.StringIO()) == 0
    args = ["train", "--init-from", "first", "--name", "second", "--image", str(image), "--labels", str(labels),
            "--iterations", "4", "--validate-every", "2", "--models-dir", str(models_dir), "--quiet"]
    assert main(args, out=io.StringIO()) == 0
    store = ModelStore(models_dir)
    parent, child = store.record("first"), store.record("second")
    assert child.parent == "first" and child.iterations_done == 4
    assert child.config.lr == pytest.approx(parent.config.lr * 0.2) and child.config.window == parent.config.window
    listing = io.StringIO()
    assert main(["models", "--models-dir", str(models_dir)], out=listing) == 0
    assert "continued from first" in listing.getvalue()
    assert main(["train", "--init-from", "first", "--name", "third", "--models-dir", str(models_dir)]) == 2


def test_predict_many_stacks_by_name_and_by_glob_then_evaluate_pairs(tiny_models, chloroplast_crop, tmp_path,
                                                                       capsys):
    image, labels = chloroplast_crop
    inputs = tmp_path / "stacks"
    inputs.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(inputs / f"{name}.tif", image[:, :64, :64])
    slices = inputs / "c"  # a folder of numbered slices is one stack, even where a glob meets it
    slices.mkdir()
    for z in range(image.shape[0]):
        tifffile.imwrite(slices / f"slice{z}.tif", image[z, :64, :64])
    models = ["--model", "chl", "--models-dir", str(tiny_models), "--quiet"]

    named = tmp_path / "named"
    out = io.StringIO()
    assert main(["predict", *models, "--image", str(inputs / "a.tif"), "--image", str(inputs / "b.tif"),
                 "--output-dir", str(named)], out=out) == 0
    assert sorted(p.name for p in named.iterdir()) == ["a_labels.tif", "b_labels.tif"]
    assert tifffile.imread(named / "b_labels.tif").shape == (image.shape[0], 64, 64)
    assert "stack 2/2" in out.getvalue()

    globbed = tmp_path / "globbed"
    assert main(["predict", *models, "--image", str(inputs / "*.tif"), "--output-dir", str(globbed)],
                out=io.StringIO()) == 0
    assert sorted(p.name for p in globbed.iterdir()) == ["a_labels.tif", "b_labels.tif"]
    folders = tmp_path / "folders"
    assert main(["predict", *models, "--image", str(slices), "--output-dir", str(folders), "--format", "zarr"],
                out=io.StringIO()) == 0
    assert [p.name for p in folders.iterdir()] == ["c_labels.zarr"]

    # every argument is checked first: a missing third stack refuses the job before the first is labelled
    refused = tmp_path / "refused"
    assert main(["predict", *models, "--image", str(inputs / "*.tif"), "--image", str(inputs / "none.tif"),
                 "--output-dir", str(refused)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: image: ") and not refused.exists()
    assert main(["predict", *models, "--image", str(inputs / "*.tif"), "--output", str(tmp_path / "o.tif")]) == 2
    assert capsys.readouterr().err.startswith("error: output: 2 stacks")

    truth = tmp_path / "truth.tif"
    tifffile.imwrite(truth, labels[:, :64, :64])
    rows = io.StringIO()
    table = tmp_path / "scores.csv"
    assert main(["evaluate", "--prediction", str(named / "a_labels.tif"), "--truth", str(truth),
                 "--prediction", str(truth), "--truth", str(truth), "--csv", str(table)], out=rows) == 0
    reports = [json.loads(line) for line in rows.getvalue().splitlines()]
    assert [r["prediction"] for r in reports] == [str(named / "a_labels.tif"), str(truth)]
    assert reports[1]["f1_50"] == 1.0
    lines = table.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("prediction,truth,")
    assert main(["evaluate", "--prediction", str(truth), "--truth", str(truth), "--truth", str(truth)]) == 2
    assert capsys.readouterr().err.startswith("error: truth: ")
