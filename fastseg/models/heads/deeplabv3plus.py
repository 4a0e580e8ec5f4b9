"""DeepLabv3+ head (Chen et al. 2018): ASPP on C4 and a decoder with the stride-4 skip from C1."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastseg.models.heads.aspp import ASPP
from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import ConvBNReLU, resize


class DeepLabV3PlusHead(DecodeHead):
    """ASPP(C4) upsampled to C1's size, concat with a 48-channel 1x1 projection of C1, two 3x3 ConvBNReLU.

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
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.aspp = ASPP(in_channels, channels, rates)
        self.skip = ConvBNReLU(c1_channels, skip_channels, 1)
        self.decoder = nn.Sequential(
            ConvBNReLU(channels + skip_channels, channels, 3), ConvBNReLU(channels, channels, 3)
        )

    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        return self.decode(self.aspp(features[3]), features[0])

    def decode(self, context: Tensor, c1: Tensor) -> Tensor:
        """ASPP output (B, channels, h, w) and C1 (B, c1_channels, H/4, W/4) -> (B, channels, H/4, W/4)."""
        context = resize(context, c1.shape[-2:])
        return self.decoder(torch.cat([context, self.skip(c1)], dim=1))
