"""The quick start's screenshot script keeps working (with seconds of training instead of minutes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from skimage.io import imread

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "screenshots.py"


def test_screenshot_script_takes_every_step(tmp_path, qapp):
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shots = module.take(tmp_path, minutes=0.1)
    assert [p.name for p in shots] == ["quickstart_1_sample.png", "quickstart_2_training.png",
                                       "quickstart_3_autolabel.png", "quickstart_4_evaluate.png"]
    for path in shots:
        image = imread(path)
        assert image.shape[0] > 500 and image.shape[1] > 800
        assert np.std(image[..., :3]) > 10  # a drawn window, not a blank frame
