"""Every rule of a training job names its field and says what would be valid."""

from __future__ import annotations

import json

import pytest
import torch

from napari_plantbio_train import planning
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.models.store import ModelStore


def _errors(config: TrainConfig, **context) -> dict[str, str]:
    return {e.field: e.message for e in planning.problems(config, **context)}


def test_defaults_need_only_a_name_and_work_on_a_stack():
    config = TrainConfig(name="chloroplasts")
    assert planning.problems(config, image_shape=(10, 600, 600), labels_shape=(10, 600, 600)) == []
    window = planning.window_for(config, (10, 600, 600))
    divisor = planning.divisor_for(config, (10, 600, 600))
    assert len(window) == 3 and all(w % d == 0 for w, d in zip(window, divisor))


@pytest.mark.parametrize("slices", [2, 3, 4, 6, 10, 40])
def test_default_window_fits_thin_stacks(slices):
    """Isotropic voxels (the guide's default of 1 nm everywhere) on a stack of a few sections still work."""
    config = TrainConfig(name="m", dims="3d")
    shape = (slices, 300, 300)
    assert planning.problems(config, image_shape=shape) == []
    assert planning.window_for(config, shape)[0] <= slices


def test_round_trip_through_json():
    config = TrainConfig(name="m", mode="instance", dims="2d", voxel_size=(4.0, 4.0, 40.0), window=(128, 128),
                         time_limit_min=15.0)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_unknown_field_in_a_saved_job_is_named():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"name": "m", "windw": [1, 2]})
    assert info.value.field == "windw"


def test_window_larger_than_image():
    errors = _errors(TrainConfig(name="m", dims="2d", window=(512, 512)), image_shape=(300, 700))
    assert "window" in errors and "larger than the image" in errors["window"] and "300" in errors["window"]


def test_window_not_fitting_downsampling_names_nearest_size():
    config = TrainConfig(name="m", dims="2d", window=(100, 128), depth=4)
    errors = _errors(config, image_shape=(512, 512))
    assert "nearest valid size is 96" in errors["window"]


def test_anisotropic_3d_network_does_not_pool_z():
    config = TrainConfig(name="m", dims="3d", voxel_size=(5, 5, 50), depth=3)
    assert planning.divisor_for(config)[0] == 1
    assert _errors(config.replace(window=(3, 64, 64)), image_shape=(5, 200, 200)) == {}


def test_window_with_wrong_number_of_axes():
    assert "window" in _errors(TrainConfig(name="m", dims="3d", window=(64, 64)), image_shape=(5, 100, 100))


def test_3d_on_a_single_image():
    assert "dims" in _errors(TrainConfig(name="m", dims="3d"), image_shape=(300, 300))


def test_labels_shape_must_match():
    assert "labels" in _errors(TrainConfig(name="m", dims="2d"), image_shape=(300, 300), labels_shape=(300, 299))


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "with space", ".hidden", "x" * 65])
def test_unsafe_names(name):
    assert "name" in _errors(TrainConfig(name=name))


def test_name_taken_unless_resuming(models_dir, tmp_path):
    folder = models_dir / "taken"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{}")
    assert "already exists" in _errors(TrainConfig(name="taken"), models_dir=models_dir)["name"]
    assert "name" not in _errors(TrainConfig(name="taken"), models_dir=models_dir, resume=True)
    assert "no model named" in _errors(TrainConfig(name="fresh"), models_dir=models_dir, resume=True)["name"]
    assert ModelStore(models_dir).exists("taken")


def test_more_gpus_than_present():
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    errors = _errors(TrainConfig(name="m", gpus=present + 1))
    assert "gpus" in errors and f"has {present}" in errors["gpus"]


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("lr", -1e-3), ("batch_size", 0), ("iterations", 0),
                                         ("iteration_save", -5), ("iteration_step", 1.5), ("workers", 0),
                                         ("voxel_size", (1, 0, 1)), ("mode", "panoptic"), ("dims", "4d"),
                                         ("time_limit_min", 0), ("stem_stride", 3)])
def test_bad_values_name_their_field(field, value):
    errors = _errors(TrainConfig(name="m").replace(**{field: value}))
    assert field in errors, errors


def test_validate_raises_the_first_problem():
    with pytest.raises(ConfigError, match="^batch_size: "):
        planning.validate(TrainConfig(name="m", batch_size=0))
