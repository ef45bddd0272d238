"""Training windows' intensities are pushed as far as other sessions and tissue drift, and stay usable."""

from __future__ import annotations

import numpy as np

from napari_plantbio_train.training.sampling import DRIFT, MILD, jitter_intensity


def _window(rng: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    return np.broadcast_to(ramp, (4, 64, 64)).copy() + rng.normal(0, 0.01, (4, 64, 64)).astype(np.float32)


def test_drift_spreads_windows_wider_than_the_old_jitter():
    rng = np.random.default_rng(0)
    spreads = {}
    for name, how in (("drift", DRIFT), ("mild", MILD)):
        outs = [jitter_intensity(_window(rng), rng, how) for _ in range(300)]
        assert all(o.shape == (4, 64, 64) and o.dtype == np.float32 and np.isfinite(o).all() for o in outs)
        means, stds = np.array([o.mean() for o in outs]), np.array([o.std() for o in outs])
        spreads[name] = (means.max() - means.min(), stds.max() / stds.min())
    assert spreads["drift"][0] > 1.5 * spreads["mild"][0], spreads  # brightness and gamma
    assert spreads["drift"][1] > 1.5 * spreads["mild"][1], spreads  # contrast


def test_blur_and_gamma_act_in_plane_and_keep_the_order_of_intensities():
    rng = np.random.default_rng(1)
    how = DRIFT.__class__(contrast=(1.0, 1.0), brightness=0.0, gamma=(0.5, 0.5), gamma_p=1.0,
                          blur_sigma=(1.0, 1.0), blur_p=1.0, noise_p=0.0)
    x = np.zeros((3, 32, 32), np.float32)
    x[1, 16, 16] = 1.0
    out = jitter_intensity(x, rng, how)
    assert out[0].max() == 0 and out[2].max() == 0, "blur never mixes slices (z can be far coarser)"
    assert out[1, 16, 16] > out[1, 16, 18] > out[1, 16, 24] >= 0
