"""bioimage.io export and safe import of named models."""

from __future__ import annotations

import contextlib
import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_plantbio_train.cli import main
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.models.exchange import ProbabilityUNet, export_model, import_model, validate_package
from napari_plantbio_train.models.store import ModelError, ModelStore
from napari_plantbio_train.training.loop import run_to_end, train
from napari_plantbio_train.inference.predictor import make_predictor

TINY = {"base_channels": 4, "depth": 2, "iterations": 4, "validate_every": 4, "iteration_save": 4, "batch_size": 2,
        "lr": 3e-3, "precision": "fp32"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, chloroplast_crop):
    """A briefly trained 3D instance model and its package, with a crop of the stack as the test input."""
    pytest.importorskip("bioimageio.spec")
    root = tmp_path_factory.mktemp("exchange_models")
    image, labels = chloroplast_crop
    run_to_end(train(TrainConfig(name="chl", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                                 **TINY), image, labels, models_dir=root))
    package = export_model(ModelStore(root), "chl", tmp_path_factory.mktemp("packages") / "chl.zip",
                           test_input=image[1:3, 64:128, 64:128])
    return root, package


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _rewrite(source: Path, target: Path, *, drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for name in src.namelist():
            if name not in drop and name not in (add or {}):
                out.writestr(name, src.read(name))
        for name, data in (add or {}).items():
            out.writestr(name, data)
    return target


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as archive:
        return json.loads(archive.read("rdf.yaml"))  # written as JSON, which is YAML


def test_export_is_a_valid_bioimageio_model(exported):
    spec = pytest.importorskip("bioimageio.spec")
    _, package = exported
    validate_package(package)
    with zipfile.ZipFile(package) as archive:
        descr = spec.load_description(archive, perform_io_checks=True)
        names = set(archive.namelist())
    assert not isinstance(descr, spec.InvalidDescr) and descr.validation_summary.status != "failed"
    assert str(descr.format_version).startswith("0.5")
    assert {"config.json", "model.json", "checkpoints/best.pt", "README.md", "test_input.npy"} <= names
    assert [p.name for p in package.parent.iterdir()] == ["chl.zip"]  # no temporary file left behind
    rdf = _rdf(package)
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["foreground", "contour"]
    assert [a["size"] for a in rdf["inputs"][0]["axes"][2:]] == [2, 64, 64]
    assert rdf["authors"] == [{"name": "napari-plantbio-train user"}] and rdf["license"] == "MIT"


def test_packaged_weights_reproduce_the_test_output_and_our_predictor(exported, chloroplast_crop):
    root, package = exported
    rdf = _rdf(package)
    with zipfile.ZipFile(package) as archive:
        raw = np.load(io.BytesIO(archive.read("test_input.npy")))
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))
        scripted = torch.jit.load(io.BytesIO(archive.read("weights_torchscript.pt")))
        state = torch.load(io.BytesIO(archive.read("weights_state_dict.pt")), weights_only=True)
    image, _ = chloroplast_crop
    np.testing.assert_array_equal(raw[0, 0], image[1:3, 64:128, 64:128].astype(np.float32))
    kwargs = rdf["inputs"][0]["preprocessing"][0]["kwargs"]
    x = torch.from_numpy(raw * np.float32(kwargs["gain"]) + np.float32(kwargs["offset"]))  # scale_linear
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), expected, atol=1e-5)
        architecture = ProbabilityUNet(**rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"])
        architecture.load_state_dict(state)
        np.testing.assert_allclose(architecture.eval()(x).numpy(), expected, atol=1e-5)

    model, record = ModelStore(root).load_model("chl")
    normalised = (raw - np.float32(record.normalisation["low"])) / np.float32(
        record.normalisation["high"] - record.normalisation["low"])
    ours = make_predictor(model, "instance", torch.device("cpu"), contextlib.nullcontext())
    with torch.no_grad():
        np.testing.assert_allclose(ours(torch.from_numpy(normalised)).numpy(), expected, atol=1e-4)
    assert 0 <= expected.min() and expected.max() <= 1


def test_round_trip_gives_the_same_model(exported, tmp_path):
    root, package = exported
    other = ModelStore(tmp_path / "elsewhere")
    assert import_model(other, package) == "chl"
    original, record = ModelStore(root).load_model("chl")
    copy, imported = other.load_model("chl")
    assert imported.config == record.config
    assert imported.normalisation == record.normalisation and imported.window == record.window
    assert imported.network == record.network and imported.classes == record.classes
    x = torch.rand(1, 1, 2, 64, 64)
    with torch.no_grad():
        assert torch.equal(original(x), copy(x))
    other.load_checkpoint(imported, "last")  # the resumable checkpoint came along too

    with pytest.raises(ModelError, match="already exists.*name"):
        import_model(other, package)
    assert import_model(other, package, name="chl-copy") == "chl-copy"
    assert other.record("chl-copy").config.name == "chl-copy"
    assert import_model(other, record.folder, name="from-folder") == "from-folder"  # a model folder too
    assert other.names() == ["chl", "chl-copy", "from-folder"]
    assert not [p for p in other.root.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage, message", [
    ("no model.json", "lacks model.json"),
    ("corrupted", "not a readable zip"),
    ("foreign", "only packages exported by this plugin"),
    ("bad checkpoint path", "does not contain"),
])
def test_broken_packages_are_refused_without_writing(exported, tmp_path, damage, message):
    _, package = exported
    broken = tmp_path / "broken.zip"
    if damage == "no model.json":
        _rewrite(package, broken, drop=("model.json",))
    elif damage == "corrupted":
        broken.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    elif damage == "foreign":
        _rewrite(package, broken, drop=("model.json", "config.json"))
    else:
        with zipfile.ZipFile(package) as archive:
            meta = json.loads(archive.read("model.json"))
        meta["best"] = "../../best.pt"
        _rewrite(package, broken, add={"model.json": json.dumps(meta).encode()})
    store = ModelStore(tmp_path / "models")
    import_model(store, package, name="existing")
    before = _files_under(tmp_path)
    with pytest.raises(ModelError, match=message):
        import_model(store, broken, name="new")
    assert _files_under(tmp_path) == before


@pytest.mark.parametrize("entry", ["../evil.txt", "/tmp/evil.txt", "checkpoints/../../evil.txt", "link"])
def test_entries_that_leave_the_package_are_refused(exported, tmp_path, entry):
    _, package = exported
    hostile = tmp_path / "hostile.zip"
    _rewrite(package, hostile)
    with zipfile.ZipFile(hostile, "a") as archive:
        info = zipfile.ZipInfo(entry)
        if entry == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd" if entry == "link" else "evil")
    before = _files_under(tmp_path)
    with pytest.raises(ModelError, match=f"entry '{entry}'"):
        import_model(ModelStore(tmp_path / "models"), hostile)
    assert _files_under(tmp_path) == before and not (tmp_path / "models").exists()


class Payload:
    """Stands for any object a checkpoint could smuggle in; unpickling one would run the file's code."""


def test_a_checkpoint_needing_unpickling_is_refused(exported, tmp_path):
    _, package = exported
    buffer = io.BytesIO()
    torch.save({"model": Payload(), "iteration": 4}, buffer)
    hostile = _rewrite(package, tmp_path / "pickled.zip", add={"checkpoints/best.pt": buffer.getvalue()})
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelError, match="cannot read safely|not a checkpoint"):
        import_model(store, hostile)
    assert store.names() == [] and _files_under(store.root) == set()


def test_cli_export_and_import(exported, tmp_path, capsys):
    root, _ = exported
    package = tmp_path / "cli.zip"
    out = io.StringIO()
    assert main(["export", "--model", "chl", "--output", str(package), "--models-dir", str(root)], out=out) == 0
    assert package.is_file() and "exported 'chl'" in out.getvalue()
    target = tmp_path / "models"
    assert main(["import", str(package), "--models-dir", str(target)], out=out) == 0
    assert main(["import", str(package), "--models-dir", str(target), "--name", "second"], out=out) == 0
    assert ModelStore(target).names() == ["chl", "second"]
    capsys.readouterr()
    assert main(["import", str(package), "--models-dir", str(target)], out=out) == 2
    assert main(["export", "--model", "missing", "--output", str(package), "--models-dir", str(root)], out=out) == 2
    assert main(["import", str(tmp_path / "nothing.zip"), "--models-dir", str(target)], out=out) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "already exists" in errors[0] and "missing" in errors[1] and "does not exist" in errors[2]


def test_a_2d_semantic_model_exports_and_imports(plate_crop, tmp_path):
    pytest.importorskip("bioimageio.spec")
    image, labels = plate_crop
    store = ModelStore(tmp_path / "models")
    run_to_end(train(TrainConfig(name="plate", mode="semantic", dims="2d", window=(64, 64), **TINY), image,
                     labels * 3, models_dir=store.root))
    package = export_model(store, "plate", tmp_path / "plate.zip")  # validated inside; a random test input
    rdf = _rdf(package)
    assert [a["id"] for a in rdf["inputs"][0]["axes"][2:]] == ["y", "x"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["class_0", "class_3"]
    with zipfile.ZipFile(package) as archive:
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))
    np.testing.assert_allclose(expected.sum(1), 1, atol=1e-5)  # softmax over the classes
    with pytest.raises(ValueError, match=r"window \(64, 64\)"):
        export_model(store, "plate", tmp_path / "other.zip", test_input=image[:32, :64])
    other = ModelStore(tmp_path / "other")
    import_model(other, package)
    assert other.record("plate").classes == [0, 3]
