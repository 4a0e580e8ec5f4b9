"""DeepLabv3 head (Chen et al. 2017): atrous spatial pyramid pooling on C4."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import ConvBNReLU, SeparableConvBNReLU, resize


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's atrous rates: (6, 12, 18) at output stride 16, doubled at 8, halved at 32."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


class ASPP(nn.Module):
    """1x1 branch, three dilated 3x3 branches, image pooling branch; concat; projection.

    ``separable=False``: plain dilated 3x3 branches and a 1x1 projection (DeepLabv3, Chen et al. 2017).
    ``separable=True``: depthwise-separable dilated branches (:class:`SeparableConvBNReLU`) and a 3x3
    projection, mmsegmentation's DepthwiseSeparableASPPHead (the DeepLabv3+ CSFRNet's Table 2 counts).
    Shapes: (B, in_channels, h, w) -> (B, channels, h, w).
    """

    def __init__(
        self, in_channels: int, channels: int, rates: Sequence[int] = (12, 24, 36), separable: bool = False
    ) -> None:
        super().__init__()
        dilated = SeparableConvBNReLU if separable else partial(ConvBNReLU, kernel_size=3)
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)] + [dilated(in_channels, channels, dilation=r) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.project = ConvBNReLU((len(rates) + 2) * channels, channels, 3 if separable else 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(resize(self.image_pool(x), x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Head(DecodeHead):
    """ASPP on C4 followed by the classifier.

    Shapes: C4 (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, rates: Sequence[int] = (12, 24, 36),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.aspp = ASPP(in_channels, channels, rates)

    def context(self, features: Sequence[Tensor]) -> Tensor:
        return self.aspp(features[3])
