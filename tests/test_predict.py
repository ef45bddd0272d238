import numpy as np
import pytest
import torch

from napari_plantbio_train.inference.sliding import gaussian_weights, predict_stack, sliding_window, window_starts


def _double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


def test_gaussian_weights_peak_one_and_never_zero():
    weights = gaussian_weights((5, 8, 8))
    assert weights.dtype == np.float32
    assert weights.shape == (5, 8, 8)
    assert weights.max() == pytest.approx(1.0)
    assert weights.min() > 0
    assert weights[2, 3, 3] > weights[0, 0, 0]


@pytest.mark.parametrize("size, window, overlap", [(10, 4, 0.0), (11, 4, 0.5), (17, 8, 0.75), (4, 4, 0.5),
                                                   (3, 4, 0.5), (5, 1, 0.9)])
def test_window_starts_cover_axis_and_end_at_size(size, window, overlap):
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    assert starts[-1] + window == max(size, window)
    covered = np.zeros(max(size, window), bool)
    for start in starts:
        covered[start:start + window] = True
    assert covered.all()


def test_window_starts_stride():
    assert window_starts(16, 8, 0.5) == [0, 4, 8]
    assert window_starts(10, 4, 0.0) == [0, 4, 6]


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("shape, window", [
    ((2, 13, 11), (8, 4)),  # odd sizes, not multiples of the window
    ((1, 3, 9), (8, 4)),  # y shorter than the window: replicate padding
    ((1, 6, 9), (8, 4)),  # y shorter than the window: reflect padding
    ((1, 5, 7, 9), (4, 4, 4)),
    ((2, 2, 9, 6), (4, 4, 4)),  # z shorter than the window
])
def test_sliding_window_reconstructs_identity_model(shape, window, overlap, batch_size):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    result = sliding_window(_double, image, window, overlap=overlap, batch_size=batch_size)
    assert result.shape == image.shape
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, 2 * image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape, window", [((1, 13, 11), (8, 4)), ((1, 5, 7, 9), (4, 4, 4))])
def test_sliding_window_constant_model_has_no_seams(shape, window):
    image = torch.rand(shape)

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3, *x.shape[2:]), 0.7)

    result = sliding_window(constant, image, window, overlap=0.5, batch_size=2, out_channels=3)
    assert result.shape == (3, *shape[1:])
    torch.testing.assert_close(result, torch.full_like(result, 0.7), atol=1e-6, rtol=0)


def test_sliding_window_rejects_wrong_window_and_output():
    image = torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match="window"):
        sliding_window(_double, image, (4, 4, 4))
    with pytest.raises(ValueError, match="predictor returned"):
        sliding_window(lambda x: x[:, :, :2], image, (4, 4))
    with pytest.raises(ValueError, match="predictor returned"):
        sliding_window(_double, image, (4, 4), out_channels=2)


def test_predict_stack_2d_equals_per_slice_sliding_window():
    stack = np.random.default_rng(0).random((3, 10, 9), dtype=np.float32)

    def two_channels(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x ** 2], dim=1)

    calls = []
    result = predict_stack(two_channels, stack, spatial_dims=2, window=(4, 4), batch_size=3,
                           progress=lambda done, total: calls.append((done, total)))
    assert result.shape == (2, 3, 10, 9)
    assert result.dtype == np.float32
    for z in range(3):
        expected = sliding_window(two_channels, torch.from_numpy(stack[z])[None], (4, 4), batch_size=3)
        np.testing.assert_allclose(result[:, z], expected.numpy(), atol=1e-6)
    # 4 x 4 windows of 4 x 4 per slice (50% overlap); batches of 3 fill across slices: 48 windows in 16 calls
    assert calls == [(done, 48) for done in range(3, 49, 3)]


def test_predict_stack_3d_reports_final_progress():
    stack = np.random.default_rng(1).random((5, 9, 7), dtype=np.float32)
    calls = []
    result = predict_stack(_double, stack, spatial_dims=3, window=(4, 4, 4), batch_size=2,
                           progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_allclose(result[0], 2 * stack, atol=1e-5)
    total = calls[-1][1]
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == [min(total, 2 * k) for k in range(1, len(calls) + 1)]


def test_predict_stack_window_must_match_dims():
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        predict_stack(_double, np.zeros((2, 8, 8), np.float32), spatial_dims=3, window=(4, 4))


def test_blocks_sharing_a_cache_compute_each_window_once_and_predict_the_same():
    # Two overlapping reaches of one stack, on the stack's window grid (as blockwise lays them out): the windows
    # they share are computed once, and each block's output is what it computes alone.
    from napari_plantbio_train.inference.blockwise import plan_blocks
    from napari_plantbio_train.inference.sliding import WindowCache, window_origins

    rng = np.random.default_rng(0)
    stack = rng.random((4, 40, 64)).astype(np.float32)
    window, overlap = (2, 8, 8), 0.5
    blocks = plan_blocks(stack.shape, window, overlap, (0, 0, 0), max_voxels=4 * 40 * 40)
    assert len(blocks) >= 2
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return torch.cat([x.sin(), x.cos()], dim=1)

    cache = WindowCache((o for b in blocks for o in window_origins(b.reach, window, overlap)), most=10_000)
    for block in blocks:
        region = tuple(slice(a, b) for a, b in block.reach)
        alone = predict_stack(counted, stack[region], spatial_dims=3, window=window, overlap=overlap, batch_size=3)
        shared = predict_stack(counted, stack[region], spatial_dims=3, window=window, overlap=overlap, batch_size=3,
                               cache=cache, origin=tuple(a for a, _ in block.reach))
        np.testing.assert_array_equal(shared, alone)
    every = sum(len(window_origins(b.reach, window, overlap)) for b in blocks)
    unique = len({o for b in blocks for o in window_origins(b.reach, window, overlap)})
    assert unique < every and cache.computed == unique and cache.hits == every - unique
    assert not cache._kept, "nothing is kept once the last block that needs it has run"

    # Holding at most one output, the shared windows are mostly computed again, with the same result.
    small = WindowCache((o for b in blocks for o in window_origins(b.reach, window, overlap)), most=1)
    for block in blocks:
        region = tuple(slice(a, b) for a, b in block.reach)
        alone = predict_stack(counted, stack[region], spatial_dims=3, window=window, overlap=overlap, batch_size=3)
        np.testing.assert_array_equal(predict_stack(counted, stack[region], spatial_dims=3, window=window,
                                                    overlap=overlap, batch_size=3, cache=small,
                                                    origin=tuple(a for a, _ in block.reach)), alone)
        assert len(small._kept) <= 1
    assert small.computed > unique
