"""The models folder side by side (models/catalogue.py): summaries, validation curves, rename and delete under the
folder lock, on copies of the tiny models trained once for the module."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from napari_plantbio_train.job.config import ConfigError
from napari_plantbio_train.models.catalogue import delete_model, rename_model, summaries, validation_curve
from napari_plantbio_train.models.lock import FolderLock
from napari_plantbio_train.models.store import ModelStore


@pytest.fixture
def store(tiny_models, tmp_path) -> ModelStore:
    root = tmp_path / "models"
    shutil.copytree(tiny_models, root)
    # A version of "chl": what continuing a model writes about its family.
    shutil.copytree(root / "chl", root / "chl-v2")
    meta = json.loads((root / "chl-v2" / "model.json").read_text())
    (root / "chl-v2" / "model.json").write_text(json.dumps({**meta, "parent": "chl", "lineage": ["chl"]}))
    config = json.loads((root / "chl-v2" / "config.json").read_text())
    (root / "chl-v2" / "config.json").write_text(json.dumps({**config, "name": "chl-v2", "init_from": "chl"}))
    return ModelStore(root)


def test_summaries_say_what_each_model_is(store):
    rows = {row.name: row for row in summaries(store)}
    assert sorted(rows) == ["chl", "chl-v2", "plate"]
    chl, plate = rows["chl"], rows["plate"]
    record = store.record("chl")
    assert (chl.mode, chl.dims, chl.voxel_size) == ("instance", "3d", (5.0, 5.0, 50.0))
    assert chl.iterations == record.iterations_done > 0 and chl.best_score == record.best_score
    assert (plate.mode, plate.dims, plate.parent) == ("semantic", "2d", None)
    assert plate.voxel_size == tuple(store.record("plate").config.voxel_size)
    assert rows["chl-v2"].parent == "chl" and len(chl.date) == len("2024-01-01 12:00")


def test_validation_curve_reads_the_scores_metrics_csv_logged(store):
    with open(store.folder("chl") / "metrics.csv", newline="") as handle:
        logged = [(int(r["iteration"]), float(r["validation_score"])) for r in csv.DictReader(handle)
                  if r["validation_score"]]
    curve = validation_curve(store, "chl")
    assert curve == logged and curve, "the tiny job validates at least once"
    (store.folder("plate") / "metrics.csv").unlink()
    assert validation_curve(store, "plate") == []


def test_delete_is_refused_while_a_job_writes_the_model(store):
    with FolderLock(store.root, "chl"):
        with pytest.raises(ConfigError, match="being written by a running job"):
            delete_model(store, "chl")
    assert store.exists("chl")
    delete_model(store, "chl")
    assert not store.folder("chl").exists() and store.names() == ["chl-v2", "plate"]
    with pytest.raises(ConfigError, match="no model named 'chl'"):
        delete_model(store, "chl")


def test_rename_moves_the_model_and_its_family_follows(store):
    with pytest.raises(ConfigError, match="'plate' is taken"):
        rename_model(store, "chl", "plate")
    with pytest.raises(ConfigError, match="not a valid model name"):
        rename_model(store, "chl", "../elsewhere")
    with FolderLock(store.root, "chl"), pytest.raises(ConfigError, match="being written"):
        rename_model(store, "chl", "chloroplasts")
    rename_model(store, "chl", "chloroplasts")
    assert store.names() == ["chl-v2", "chloroplasts", "plate"]
    assert store.record("chloroplasts").config.name == "chloroplasts"
    version = store.record("chl-v2")
    assert version.parent == "chloroplasts" and version.lineage == ("chloroplasts",)
    assert version.config.init_from == "chloroplasts"
    assert isinstance(store.load_model("chloroplasts"), object) and Path(store.root / "chloroplasts").is_dir()
