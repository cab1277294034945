"""Hierarchical fusion connector (Sec. IV-A)."""
import math

import pytest
import torch

from bcd.connectors import HierarchicalFusion

CHANNELS = (8, 16, 32, 64)


def _resnet_size(size, stride):
    """Spatial size of a ResNet level: stride-2 conv stem, max-pool, then stride-2 stages."""
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2  # ceil(size / 2), as for k3 s2 p1 layers
    return size


def _pyramid(h, w, strides, n=2):
    return tuple(
        torch.randn(n, c, _resnet_size(h, s), _resnet_size(w, s)) for c, s in zip(CHANNELS, strides)
    )


@pytest.mark.parametrize("strides", [(4, 8, 16, 32), (4, 8, 8, 8)])
@pytest.mark.parametrize("h,w", [(64, 96), (33, 47), (65, 31)])
def test_output_shape_at_one_eighth(strides, h, w):
    fusion = HierarchicalFusion(CHANNELS, out_channels=16)
    feats = _pyramid(h, w, strides)
    expected = (2, 16, math.ceil(h / 8), math.ceil(w / 8))
    assert fusion(feats).shape == expected  # derived from level 0 (stride 4)
    assert fusion(feats, input_size=(h, w)).shape == expected
    assert fusion(list(feats)).shape == expected


def test_default_256_channels_and_gradients():
    fusion = HierarchicalFusion(CHANNELS)
    feats = tuple(f.requires_grad_(True) for f in _pyramid(32, 32, (4, 8, 16, 32), n=1))
    out = fusion(feats)
    assert out.shape == (1, 256, 4, 4)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    assert fusion.fuse_conv.weight.grad is not None


def test_any_number_of_levels_and_single_tensor():
    single = HierarchicalFusion([8], out_channels=4, target_stride_of_first=8)
    x = torch.randn(1, 8, 5, 7)
    assert single(x).shape == (1, 4, 5, 7)
    five = HierarchicalFusion([3, 4, 5, 6, 7], out_channels=4)
    feats = [torch.randn(1, c, 40 // 2**k, 40 // 2**k) for k, c in enumerate([3, 4, 5, 6, 7])]
    assert five(feats).shape == (1, 4, 20, 20)
    assert five(feats, input_size=(80, 80)).shape == (1, 4, 10, 10)


def test_frozen_has_no_trainable_params_and_stays_in_eval():
    fusion = HierarchicalFusion(CHANNELS, out_channels=8, frozen=True)
    assert not any(p.requires_grad for p in fusion.parameters())
    assert not fusion.training
    fusion.train()
    assert not fusion.training
    wrapper = torch.nn.Sequential(fusion)
    wrapper.train()
    assert wrapper.training and not fusion.training
    trainable = HierarchicalFusion(CHANNELS, out_channels=8)
    trainable.train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_init_seed_is_reproducible():
    a = HierarchicalFusion(CHANNELS, out_channels=8, init_seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    b = HierarchicalFusion(CHANNELS, out_channels=8, init_seed=3)
    c = HierarchicalFusion(CHANNELS, out_channels=8, init_seed=4)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.fuse_conv.weight, c.fuse_conv.weight)
    # same scale as PyTorch's default initialisation
    default = HierarchicalFusion(CHANNELS, out_channels=8)
    ratio = a.fuse_conv.weight.std() / default.fuse_conv.weight.std()
    assert 0.9 < ratio < 1.1


def test_input_validation():
    fusion = HierarchicalFusion(CHANNELS, out_channels=8)
    feats = _pyramid(32, 32, (4, 8, 16, 32))
    with pytest.raises(ValueError, match="levels"):
        fusion(feats[:3])
    with pytest.raises(ValueError, match="channels"):
        fusion((feats[0], feats[1], feats[2], torch.randn(2, 63, 1, 1)))
    with pytest.raises(ValueError, match="batch"):
        fusion((feats[0], feats[1], feats[2], feats[3][:1]))
    with pytest.raises(ValueError, match="input_size"):
        fusion(feats, input_size=(32,))
    with pytest.raises(ValueError, match="in_channels"):
        HierarchicalFusion([])
    with pytest.raises(ValueError, match="stride"):
        HierarchicalFusion(CHANNELS, stride=0)


def test_level_channels_default_concatenates_to_out_channels():
    fusion = HierarchicalFusion([8, 16, 32, 64], out_channels=256)
    assert [c.out_channels for c in fusion.lateral_convs] == [64] * 4
    assert fusion.fuse_conv.in_channels == 256
    wide = HierarchicalFusion([8, 16], out_channels=32, level_channels=32)
    assert wide.fuse_conv.in_channels == 64
