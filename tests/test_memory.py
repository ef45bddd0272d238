"""What a job says when a step does not fit in memory."""

from __future__ import annotations

import torch

from napari_plantbio_train.runtime.memory import largest_fitting, out_of_memory_message, try_step
from napari_plantbio_train.models.network import UNet


def test_largest_batch_and_window_that_fit():
    budget = 3 * 16 * 128 * 128  # voxels one step may hold
    fits = lambda batch, window: batch * window[0] * window[1] * window[2] <= budget  # noqa: E731
    assert largest_fitting(fits, 16, (16, 256, 256), (4, 16, 16)) == (None, (16, 32, 32))
    assert largest_fitting(fits, 16, (16, 128, 128), (4, 16, 16)) == (2, (16, 32, 32))
    assert largest_fitting(fits, 4, (16, 128, 128), (4, 16, 16)) == (2, (16, 64, 64))
    # Windows never shrink below the network's divisor, and z is left alone.
    assert largest_fitting(lambda b, w: False, 2, (8, 32, 32), (2, 16, 16)) == (None, None)


def test_message_names_what_fits():
    cpu = torch.device("cpu")
    text = out_of_memory_message(cpu, 16, (8, 256, 256), (4, (8, 128, 128)))
    assert text.startswith("the computer ran out of memory at 16 windows per batch of 8x256x256")
    assert "samples per batch 4 fits with this window" in text and "window 8x128x128 fits with 16 per batch" in text
    assert "resume" in text
    assert "use a smaller window and batch 1" in out_of_memory_message(cpu, 1, (8, 32, 32), (None, None))


def test_a_probe_step_leaves_no_gradients():
    model = UNet(in_channels=1, out_channels=2, spatial_dims=2, base_channels=4, depth=2)
    assert try_step(model, 2, (32, 32), torch.device("cpu"), torch.autocast("cpu", enabled=False))
    assert all(p.grad is None for p in model.parameters())
