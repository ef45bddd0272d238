import json

import pytest
import torch

from napari_plantbio_train.models.network import UNet, nearest_valid_size


def tiny(spatial_dims: int, **kwargs) -> UNet:
    return UNet(spatial_dims, 1, 3, base_channels=4, depth=2, **kwargs)


@pytest.mark.parametrize("spatial_dims, kwargs, shape", [
    (2, {}, (2, 1, 16, 12)),
    (3, {}, (1, 1, 8, 8, 12)),
    (3, {"anisotropy": 10.0}, (1, 1, 3, 8, 12)),
    (2, {"stem_stride": 2}, (2, 1, 16, 24)),
    (3, {"stem_stride": 4, "anisotropy": 10.0}, (1, 1, 2, 16, 16)),
])
def test_forward_backward_keeps_spatial_shape(spatial_dims, kwargs, shape):
    model = tiny(spatial_dims, **kwargs)
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], 3, *shape[2:])
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("spatial_dims, kwargs, divisor", [
    (2, {}, (4, 4)),
    (3, {}, (4, 4, 4)),
    # z/xy spacing 10 -> 20 -> 40 in-plane pooling keeps z > 2 xy at both levels: z is never pooled.
    (3, {"anisotropy": 10.0}, (1, 4, 4)),
    # 3 > 2*1 pools in-plane first; then 3 < 2*2, so the second step pools z as well.
    (3, {"anisotropy": 3.0}, (2, 4, 4)),
    (2, {"stem_stride": 2}, (8, 8)),
    (3, {"stem_stride": 2}, (4, 8, 8)),
    # The stem coarsens x/y to spacing 2, so z (spacing 3) is no longer > 2x coarser: isotropic from the start.
    (3, {"stem_stride": 2, "anisotropy": 3.0}, (4, 8, 8)),
    (3, {"stem_stride": 4, "anisotropy": 10.0}, (2, 16, 16)),
    (2, {"anisotropy": 10.0}, (4, 4)),
])
def test_divisor(spatial_dims, kwargs, divisor):
    assert tiny(spatial_dims, **kwargs).divisor == divisor


def test_anisotropic_levels_use_flat_kernels_until_isotropic():
    model = UNet(3, 1, 2, base_channels=2, depth=4, anisotropy=10.0)
    assert model.pool_factors == ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    assert model.kernels == ((1, 3, 3),) * 3 + ((3, 3, 3),) * 2
    assert model.divisor == (2, 16, 16)


def test_bad_shape_names_axis_and_nearest_size():
    model = tiny(3)
    with pytest.raises(ValueError, match=r"axis y .*nearest valid size is 12"):
        model(torch.zeros(1, 1, 8, 13, 8))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.zeros(1, 2, 8, 8, 8))


def test_nearest_valid_size():
    assert nearest_valid_size(13, 4) == 12
    assert nearest_valid_size(14, 4) == 16  # tie goes up
    assert nearest_valid_size(16, 4) == 16
    assert nearest_valid_size(1, 4) == 4
    assert nearest_valid_size(3, 8) == 8


def test_from_spec_round_trips_through_json():
    model = tiny(3, anisotropy=10.0, stem_stride=2, max_channels=6)
    spec = json.loads(json.dumps(model.spec))
    rebuilt = UNet.from_spec(spec)
    assert rebuilt.spec == model.spec
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())


def test_channels_capped_and_groupnorm_divides():
    model = UNet(2, 1, 2, base_channels=12, depth=3, max_channels=40)
    widths = [m.num_channels for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert max(widths) == 40
    assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8
               for m in model.modules() if isinstance(m, torch.nn.GroupNorm))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        UNet(1, 1, 1)
    with pytest.raises(ValueError):
        UNet(2, 1, 1, stem_stride=3)


def test_max_z_pools_limits_pooling_along_z_only():
    net = UNet(3, 1, 2, base_channels=4, depth=3, anisotropy=1.0, max_z_pools=1)
    assert net.divisor == (2, 8, 8)
    x = torch.randn(1, 1, 2, 16, 16)
    assert net(x).shape == (1, 2, 2, 16, 16)
    assert UNet.from_spec(json.loads(json.dumps(net.spec))).divisor == (2, 8, 8)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 1), (1, 1, 1)])
def test_slice_tap_conv_equals_conv3d(kernel):
    """The fast 3D convolution must compute exactly what nn.Conv3d computes with the same weights."""
    from napari_plantbio_train.models.network import SliceTapConv

    torch.manual_seed(0)
    padding = tuple(k // 2 for k in kernel)
    fast = SliceTapConv(5, 7, kernel, padding, bias=True)
    reference = torch.nn.Conv3d(5, 7, kernel, padding=padding)
    with torch.no_grad():
        reference.weight.copy_(fast.conv.weight.view(kernel[0], 7, 5, *kernel[1:]).permute(1, 2, 0, 3, 4))
        fast.bias.normal_()
        reference.bias.copy_(fast.bias)
    x = torch.randn(2, 5, 6, 9, 10)
    torch.testing.assert_close(fast(x), reference(x), atol=1e-5, rtol=1e-5)
