"""Dilated ResNet-18/34/50/101 for segmentation (He et al. 2016; dilation as in DeepLab and PSPNet).

The module and parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...), and the deep stem follows timm's (``conv1.0/1/3/4/6`` + ``bn1``), so
ImageNet checkpoints of either load with a plain key mapping (see :mod:`.pretrained`).

``forward`` returns the tuple ``(c1, c2, c3, c4)`` of the four stage outputs, at strides
``(4, 8, 8|16|32, 8|16|32)`` depending on ``output_stride``; ``out_channels`` and ``strides`` give
their channels and strides.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from fastseg.models.backbones.pretrained import load_pretrained

_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# output stride -> (strides of layer1..4, dilations of layer1..4)
_STRIDES_DILATIONS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut; ResNet-18/34.

    ``conv1`` (which carries the stride) is dilated by ``first_dilation`` (default ``dilation``),
    ``conv2`` by ``dilation``: timm's BasicBlock.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries stride and dilation, the "V1.5" placement), 1x1 expand by 4; ResNet-50/101.

    The 3x3 is dilated by ``first_dilation`` (default ``dilation``), as timm's and torchvision's.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, first_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _deep_stem(in_channels: int, stem_channels: int = 64) -> nn.Sequential:
    """Deep stem without its last BN (that one is ``bn1``): 3x3/2 -> C/2, 3x3 -> C/2, 3x3 -> C, with
    C = ``stem_channels``: 64 is ResNetV1c's 32-32-64, 128 the official DecoupleSegNet / FENet 64-64-128."""
    width = stem_channels // 2
    return nn.Sequential(
        _conv3x3(in_channels, width, stride=2),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        _conv3x3(width, width),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        _conv3x3(width, stem_channels),
    )


class ResNet(nn.Module):
    """ResNet backbone returning C1..C4.

    Args:
        depth: 18, 34, 50 or 101.
        output_stride: 32 (plain), 16 (layer4 dilated by 2) or 8 (layer3 by 2, layer4 by 4).
        deep_stem: three 3x3 convs (C/2, C/2, C) instead of one 7x7 conv (ResNetV1c).
        stem_channels: C of the deep stem: 64 (ResNetV1c, 32-32-64) or 128 (the official DecoupleSegNet
            and FENet 64-64-128 stem; layer1 then takes 128 channels).
        multi_grid: per-block dilation multipliers of layer4 (DeepLabv3's (1, 2, 4)); one per block.
        dilations: dilations of layer1..4 in place of the output stride's, strides unchanged (FENet's
            strong baseline: ``output_stride=32, dilations=(1, 1, 2, 4)``, the official code's).
        in_channels: image channels.

    Dilation convention (timm's ``make_blocks``): the first block of a stage takes the previous
    stage's dilation in the 3x3 that carries the stride (a Bottleneck's only 3x3, a BasicBlock's
    conv1), its other 3x3 (a BasicBlock's conv2) and the later blocks the stage's dilation; with
    ``multi_grid`` block i of layer4 uses ``dilation * multi_grid[i]``. For ResNet-50/101 this is also
    torchvision's and mmsegmentation's rule; for ResNet-18/34 mmsegmentation differs (its BasicBlock
    never dilates conv2, and its first block takes the stage's dilation).

    Shapes: (B, in_channels, H, W) -> tuple of (B, out_channels[i], ceil(H / strides[i]), ...).
    """

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 32,
        deep_stem: bool = False,
        multi_grid: Sequence[int] | None = None,
        in_channels: int = 3,
        stem_channels: int = 64,
        dilations: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if output_stride not in _STRIDES_DILATIONS:
            raise ValueError(f"output_stride must be one of {sorted(_STRIDES_DILATIONS)}, got {output_stride}")
        kind, blocks = _DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        if multi_grid is not None and len(multi_grid) != blocks[3]:
            raise ValueError(f"multi_grid needs one multiplier per layer4 block ({blocks[3]}), got {tuple(multi_grid)}")
        if dilations is not None and (len(dilations) != 4 or min(dilations) < 1):
            raise ValueError(f"dilations needs four positive values (layer1..4), got {tuple(dilations)}")
        if stem_channels != 64 and not deep_stem:
            raise ValueError(f"stem_channels={stem_channels} needs deep_stem=True (the 7x7 stem has 64)")
        strides, stride_dilations = _STRIDES_DILATIONS[output_stride]
        dilations = tuple(dilations) if dilations is not None else stride_dilations
        self.depth = depth
        self.output_stride = output_stride
        self.deep_stem = deep_stem

        self.conv1 = _deep_stem(in_channels, stem_channels) if deep_stem else nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.inplanes = stem_channels
        previous_dilation = 1
        stages = []
        for index, planes in enumerate((64, 128, 256, 512)):
            grid = tuple(multi_grid) if (index == 3 and multi_grid is not None) else None
            stages.append(self._make_layer(
                block, planes, blocks[index], strides[index], dilations[index], previous_dilation, grid
            ))
            previous_dilation = dilations[index]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.out_channels = tuple(planes * block.expansion for planes in (64, 128, 256, 512))
        self.strides = (4, 8, 8 * strides[2], 8 * strides[2] * strides[3])
        self._init_weights()

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        num_blocks: int,
        stride: int,
        dilation: int,
        first_dilation: int,
        grid: tuple[int, ...] | None,
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        if grid is not None:
            block_dilations = [dilation * g for g in grid]
        else:
            block_dilations = [first_dilation] + [dilation] * (num_blocks - 1)
        # The first block: its strided 3x3 at block_dilations[0], the rest at the stage's (timm's rule).
        first_dilation, dilation = block_dilations[0], (block_dilations[0] if grid is not None else dilation)
        layers = [block(self.inplanes, planes, stride, dilation, downsample, first_dilation)]
        self.inplanes = out_channels
        layers += [block(out_channels, planes, 1, d) for d in block_dilations[1:]]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


def build_backbone(
    name: str, pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None, **options
) -> ResNet:
    """Backbone by name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``; ``options`` go to
    :class:`ResNet`; ``pretrained`` (a checkpoint path, URL or state dict) is loaded by :func:`load_pretrained`."""
    prefix = "resnet"
    if not name.startswith(prefix) or not name[len(prefix):].isdigit() or int(name[len(prefix):]) not in _DEPTHS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {[f'resnet{d}' for d in _DEPTHS]}")
    model = ResNet(depth=int(name[len(prefix):]), **options)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
