"""Shared test data: small crops of the real stacks in ../shared/data (skipped with a reason if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (candidate / "chloroplast3d" / "image.tif").exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("the real data folder ../shared/data is not present")
    return found


@pytest.fixture(scope="session")
def chloroplast_crop(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """4 x 192 x 192 of the chloroplast stack around several touching chloroplasts."""
    import tifffile

    image = tifffile.imread(data_dir / "chloroplast3d" / "image.tif")[3:7, 1872:2064, 1824:2016]
    labels = tifffile.imread(data_dir / "chloroplast3d" / "labels.tif")[3:7, 1872:2064, 1824:2016]
    assert len(np.unique(labels)) > 3
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


@pytest.fixture(scope="session")
def plate_crop(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    image = tifffile.imread(data_dir / "plate2d" / "image.tif")[300:492, 200:392]
    labels = tifffile.imread(data_dir / "plate2d" / "labels.tif")[300:492, 200:392]
    assert labels.any()
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


TINY_JOB = dict(base_channels=4, depth=2, iterations=20, validate_every=20, iteration_save=20, batch_size=2,
                lr=3e-3)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, chloroplast_crop, plate_crop) -> Path:
    """A briefly trained 3D instance model ("chl") and 2D semantic model ("plate", classes 0 and 3) in one
    models folder, shared by the auto-label tests; tests copy it before changing anything in it."""
    from napari_plantbio_train.job.config import TrainConfig
    from napari_plantbio_train.job.events import run_to_end
    from napari_plantbio_train.training.loop import train

    root = tmp_path_factory.mktemp("tiny_models")
    image, labels = chloroplast_crop
    run_to_end(train(TrainConfig(name="chl", mode="instance", dims="3d", window=(2, 64, 64),
                                 voxel_size=(5, 5, 50), **TINY_JOB), image, labels, models_dir=root))
    image, labels = plate_crop
    run_to_end(train(TrainConfig(name="plate", mode="semantic", dims="2d", window=(64, 64), **TINY_JOB),
                     image, labels * 3, models_dir=root))  # class values 0 and 3: results must use them
    return root


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh models folder; the environment variable points there too, so nothing touches the user's."""
    folder = tmp_path / "models"
    monkeypatch.setenv("PLANTBIO_MODELS_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _two_threads():
    """Tests share 2 cores; keep torch from oversubscribing them whatever a test sets."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


os.environ.setdefault("PLANTBIO_MODELS_DIR", str(REPO / ".pytest_models"))
# Precision verdicts of this machine (hardware.py): kept for the next test run, never in the user's cache folder.
os.environ.setdefault("PLANTBIO_CACHE_DIR", str(REPO / ".pytest_cache" / "plantbio"))
