"""DeepLabv3+ head (Chen et al. 2018): ASPP on C4 and a decoder with the stride-4 skip from C1."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from fastseg.models.heads.aspp import ASPP
from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import ConvBNReLU, SeparableConvBNReLU, resize


class DeepLabV3PlusHead(DecodeHead):
    """ASPP(C4) upsampled to C1's size, concat with a 48-channel 1x1 projection of C1, two 3x3 ConvBNReLU.

    ``separable=True`` is DeepLabv3+ as its paper (Chen et al. 2018, Sec. 3.2) and mmsegmentation's
    DepthwiseSeparableASPPHead build it: separable ASPP branches with a 3x3 projection (:class:`ASPP`)
    and separable decoder convs; ``separable=False`` uses plain 3x3 convs (and a 1x1 ASPP projection).
    Shapes: C1 (B, c1_channels, H/4, W/4), C4 (B, in_channels, h, w) -> logits (B, num_classes, H/4, W/4).
    """

    def __init__(
        self,
        in_channels: int,
        c1_channels: int,
        channels: int,
        num_classes: int,
        rates: Sequence[int] = (12, 24, 36),
        skip_channels: int = 48,
        dropout: float = 0.1,
        separable: bool = False,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.aspp = ASPP(in_channels, channels, rates, separable)
        self.skip = ConvBNReLU(c1_channels, skip_channels, 1)
        conv = SeparableConvBNReLU if separable else partial(ConvBNReLU, kernel_size=3)
        self.decoder = nn.Sequential(conv(channels + skip_channels, channels), conv(channels, channels))

    def context(self, features: Sequence[Tensor]) -> Tensor:
        """ASPP(C4): (B, channels, h, w)."""
        return self.aspp(features[3])

    def decode(self, context: Tensor, features: Sequence[Tensor]) -> Tensor:
        """ASPP output (B, channels, h, w), C1 = features[0] (B, c1_channels, H/4, W/4) -> (B, channels, H/4, W/4)."""
        c1 = features[0]
        return self.decoder(torch.cat([resize(context, c1.shape[-2:]), self.skip(c1)], dim=1))
