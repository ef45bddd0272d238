"""Shared test data: small crops of the real stacks in ../shared/data, or, where they are absent, crops of the
synthetic sample that serve the same tests (touching objects of one kind; a two-class semantic image).

Set PLANTBIO_TESTS_WITHOUT_DATA=1 to run the suite as a machine without the real data runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    if os.environ.get("PLANTBIO_TESTS_WITHOUT_DATA"):
        return None
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (candidate / "chloroplast3d" / "image.tif").exists():
            return candidate
    return None


def chloroplast_stack(region: tuple[slice, ...], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(image, instance labels) of a region of the chloroplast stack, read lazily, or of a synthetic stack of the
    region's shape (with instance ids) where the real one is absent."""
    found = shared_data_dir()
    if found is None:
        from napari_plantbio_train.io.synthetic import make_stack

        shape = tuple(len(range(*s.indices(n))) for s, n in zip(region, (10, 2341, 2195)))
        stack = make_stack(shape, seed=seed)
        return stack.image, stack.instances
    from napari_plantbio_train.io.stacks import read

    return (np.ascontiguousarray(read(found / "chloroplast3d" / "image.tif").data[region]),
            np.ascontiguousarray(read(found / "chloroplast3d" / "labels.tif").data[region]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("the real data folder ../shared/data is not present")
    return found


@pytest.fixture(scope="session")
def chloroplast_crop() -> tuple[np.ndarray, np.ndarray]:
    """4 x 192 x 192 of the chloroplast stack around several touching chloroplasts (instance ids), or of the
    synthetic sample's organelles where the real stack is absent."""
    found = shared_data_dir()
    if found is None:
        from napari_plantbio_train.io.synthetic import make_stack

        stack = make_stack((4, 192, 192), seed=3)
        image, labels = stack.image, stack.instances
    else:
        from napari_plantbio_train.io.stacks import read

        region = (slice(3, 7), slice(1872, 2064), slice(1824, 2016))
        image = read(found / "chloroplast3d" / "image.tif").data[region]
        labels = read(found / "chloroplast3d" / "labels.tif").data[region]
    assert len(np.unique(labels)) > 3
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


@pytest.fixture(scope="session")
def plate_crop() -> tuple[np.ndarray, np.ndarray]:
    """192 x 192 of the sieve-plate image with its pores (0/1), or one slice of the synthetic sample's
    chloroplasts as the one class where the real image is absent."""
    found = shared_data_dir()
    if found is None:
        from napari_plantbio_train.io.synthetic import make_stack

        stack = make_stack((1, 192, 192), seed=5)
        image, labels = stack.image[0], (stack.semantic[0] == 1).astype(np.uint8)
    else:
        from napari_plantbio_train.io.stacks import read

        region = (slice(300, 492), slice(200, 392))
        image = read(found / "plate2d" / "image.tif").data[region]
        labels = read(found / "plate2d" / "labels.tif").data[region]
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
def _own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The docks' remembered settings (the models folder, the train form's values) in a folder of each test's own:
    never the user's, and nothing one test set is seen by the next."""
    folder = tmp_path / "config"
    monkeypatch.setenv("PLANTBIO_CONFIG_DIR", str(folder))
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
