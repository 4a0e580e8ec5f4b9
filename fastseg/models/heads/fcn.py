"""FCN head (Long et al. 2015, as configured in mmsegmentation): 3x3 convs on one backbone stage."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import ConvBNReLU


class FCNHead(DecodeHead):
    """``num_convs`` 3x3 ConvBNReLU on ``features[in_index]``, optionally concatenated with the input and fused.

    Shapes: features[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 2,
        concat_input: bool = False,
        in_index: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_index = in_index
        self.convs = nn.Sequential(
            *(ConvBNReLU(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.fuse = ConvBNReLU(in_channels + channels, channels, 3) if concat_input else None

    def context(self, features: Sequence[Tensor]) -> Tensor:
        x = features[self.in_index]
        out = self.convs(x)
        if self.fuse is not None:
            out = self.fuse(torch.cat([x, out], dim=1))
        return out
