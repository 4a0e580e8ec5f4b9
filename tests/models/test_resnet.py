"""Dilated ResNet backbones: stage shapes and strides, dilations, multi-grid, V1c stem, channels_last."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastseg.models.backbones import BasicBlock, Bottleneck, ResNet, build_backbone

EXPANSION = {18: 1, 34: 1, 50: 4, 101: 4}
STAGE_STRIDES = {8: (4, 8, 8, 8), 16: (4, 8, 16, 16), 32: (4, 8, 16, 32)}


def _check_stages(model: ResNet, features, depth: int, output_stride: int, size: int, batch: int) -> None:
    expected_channels = tuple(c * EXPANSION[depth] for c in (64, 128, 256, 512))
    assert model.out_channels == expected_channels
    assert model.strides == STAGE_STRIDES[output_stride]
    assert len(features) == 4
    for feature, channels, stride in zip(features, expected_channels, STAGE_STRIDES[output_stride]):
        assert feature.shape == (batch, channels, size // stride, size // stride)
        assert torch.isfinite(feature).all()


@pytest.mark.parametrize(
    "depth, output_stride",
    # ResNet-34 at output stride 8 and 16 runs in test_multi_grid_on_the_last_stage.
    [(18, 8), (18, 16), (18, 32), (34, 32), (50, 8), (50, 16), (50, 32)],
)
def test_stage_shapes_and_strides(depth, output_stride):
    model = build_backbone(f"resnet{depth}", output_stride=output_stride).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    _check_stages(model, features, depth, output_stride, 64, 1)


def test_resnet101_forward_at_stride_8():
    model = build_backbone("resnet101", output_stride=8, deep_stem=True).eval()
    assert len(model.layer3) == 23
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    _check_stages(model, features, 101, 8, 64, 1)


def _dilations(layer: nn.Sequential) -> list[int]:
    """Dilation of each block's 3x3 conv carrying the stride (conv2 of Bottleneck, conv1 of BasicBlock)."""
    return [(b.conv2 if isinstance(b, Bottleneck) else b.conv1).dilation[0] for b in layer]


@pytest.mark.parametrize(
    "output_stride, layer3, layer4",
    [(8, [1, 2, 2, 2, 2, 2], [2, 4, 4]), (16, [1] * 6, [1, 2, 2]), (32, [1] * 6, [1, 1, 1])],
)
def test_dilations_follow_output_stride(output_stride, layer3, layer4):
    model = ResNet(depth=50, output_stride=output_stride)
    assert _dilations(model.layer3) == layer3
    assert _dilations(model.layer4) == layer4
    for layer in (model.layer3, model.layer4):
        for block in layer:
            assert block.conv2.padding == block.conv2.dilation  # "same" padding for the 3x3
    assert model.layer4[0].conv2.stride == ((2, 2) if output_stride == 32 else (1, 1))


@pytest.mark.parametrize("output_stride, base", [(8, 4), (16, 2)])
def test_multi_grid_on_the_last_stage(output_stride, base):
    model = ResNet(depth=34, output_stride=output_stride, multi_grid=(1, 2, 4)).eval()
    assert all(isinstance(b, BasicBlock) for b in model.layer4)
    assert [b.conv1.dilation[0] for b in model.layer4] == [base, 2 * base, 4 * base]
    assert [b.conv2.dilation[0] for b in model.layer4] == [base, 2 * base, 4 * base]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    _check_stages(model, features, 34, output_stride, 64, 1)


def test_multi_grid_needs_one_multiplier_per_block():
    with pytest.raises(ValueError, match="multi_grid"):
        ResNet(depth=18, output_stride=8, multi_grid=(1, 2, 4))


@pytest.mark.parametrize("kwargs, match", [({"depth": 152}, "depth"), ({"output_stride": 4}, "output_stride")])
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


def test_unknown_backbone_name_is_rejected():
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnext50")


def test_deep_stem_is_three_3x3_convs():
    model = ResNet(depth=18, deep_stem=True)
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))
    ]
    assert [type(m) for m in model.conv1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 + [nn.Conv2d]
    assert model.bn1.num_features == 64
    plain = ResNet(depth=18)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.stride == (2, 2)
    with torch.no_grad():
        features = model.eval()(torch.randn(2, 3, 64, 64))
    _check_stages(model, features, 18, 32, 64, 2)


def test_odd_input_size_rounds_up():
    model = ResNet(depth=18, output_stride=8).eval()
    with torch.no_grad():
        c1, c2, c3, c4 = model(torch.randn(1, 3, 65, 63))
    assert c1.shape[-2:] == (17, 16) and c4.shape[-2:] == (9, 8)


@pytest.mark.parametrize("depth", [18, 50])
def test_channels_last_matches_contiguous(depth):
    """float64, so that the two layouts' different float32 summation orders do not hide a layout bug."""
    model = ResNet(depth=depth, output_stride=8, deep_stem=True).eval().double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.to(memory_format=torch.channels_last))
    for a, e in zip(actual, expected):
        assert a.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(a, e)


def timm_block_dilations(num_blocks: tuple[int, ...], output_stride: int) -> list[list[tuple[int, int]]]:
    """(conv1, conv2) dilations of every BasicBlock by timm's ``make_blocks`` rule (resnet.py): a stage
    past the output stride turns its stride into dilation; block 0 gets ``first_dilation=prev_dilation``
    (its conv1) and ``dilation`` (its conv2), later blocks the stage's dilation in both."""
    net_stride, dilation, prev_dilation, stages = 4, 1, 1, []
    for stage_idx, blocks in enumerate(num_blocks):
        stride = 1 if stage_idx == 0 else 2
        if net_stride >= output_stride:
            dilation *= stride
            stride = 1
        else:
            net_stride *= stride
        stage = []
        for _ in range(blocks):
            stage.append((prev_dilation, dilation))
            prev_dilation = dilation
        stages.append(stage)
    return stages


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_basic_block_dilations_follow_timm(depth, output_stride):
    model = ResNet(depth=depth, output_stride=output_stride)
    blocks = (2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)
    ours = [[(b.conv1.dilation[0], b.conv2.dilation[0]) for b in layer]
            for layer in (model.layer1, model.layer2, model.layer3, model.layer4)]
    assert ours == timm_block_dilations(blocks, output_stride)
    if output_stride == 8:  # the first dilated block: conv1 at the previous dilation, conv2 at the new one
        assert ours[2][0] == (1, 2) and ours[3][0] == (2, 4)
    for layer in (model.layer3, model.layer4):
        for block in layer:
            assert block.conv1.padding == block.conv1.dilation and block.conv2.padding == block.conv2.dilation


@pytest.mark.parametrize("depth", [18, 101])
def test_dilated_stages_at_output_stride_32(depth):
    # FENet's strong baseline: the last two stages dilated by 2 and 4, strides kept (official code).
    model = ResNet(depth=depth, output_stride=32, dilations=(1, 1, 2, 4)).eval()
    assert model.strides == (4, 8, 16, 32)
    assert _dilations(model.layer3)[1:] == [2] * (len(model.layer3) - 1) and _dilations(model.layer4)[1:] == [4] * (len(model.layer4) - 1)
    assert model.layer3[0].downsample[0].stride == (2, 2) and model.layer4[0].downsample[0].stride == (2, 2)
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="dilations"):
        ResNet(depth=depth, dilations=(1, 2, 4))


def test_deep_stem_64_64_128():
    # The official DecoupleSegNet / FENet ResNet stem: 3x3/2 -> 64, 3x3 -> 64, 3x3 -> 128, bn1 (128).
    model = ResNet(depth=18, deep_stem=True, stem_channels=128)
    widths = [m.out_channels for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert widths == [64, 64, 128] and model.bn1.num_features == 128
    assert model.layer1[0].conv1.in_channels == 128 and model.layer1[0].downsample is not None
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32))[0].shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="deep_stem"):
        ResNet(depth=18, stem_channels=128)


def test_deep_stem_128_has_the_official_resnet_d_keys_and_shapes():
    # lxtGH/DecoupleSegNets network/resnet_d.py ResNet: conv1 = Sequential(conv3x3(3, 64, stride=2),
    # Norm2d(64), ReLU, conv3x3(64, 64), Norm2d(64), ReLU, conv3x3(64, 128)); bn1 = Norm2d(128);
    # inplanes = 128, so layer1.0 of ResNet-50 reads 128 channels.
    official = {
        "conv1.0.weight": (64, 3, 3, 3), "conv1.1.weight": (64,), "conv1.3.weight": (64, 64, 3, 3),
        "conv1.4.running_var": (64,), "conv1.6.weight": (128, 64, 3, 3), "bn1.weight": (128,),
        "layer1.0.conv1.weight": (64, 128, 1, 1), "layer1.0.downsample.0.weight": (256, 128, 1, 1),
    }
    state = ResNet(depth=50, deep_stem=True, stem_channels=128).state_dict()
    assert {key: tuple(state[key].shape) for key in official} == official
    assert not any(key.startswith("conv1.2") or key.startswith("conv1.5") for key in state)  # ReLUs
