"""PSPNet head (Zhao et al. 2017): the pyramid pooling module on C4 and a 3x3 bottleneck."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import ConvBNReLU, resize


class PyramidPoolingModule(nn.Module):
    """Average-pool to each bin size, 1x1 ConvBNReLU to ``channels``, upsample, concat with the input.

    Shapes: (B, in_channels, h, w) -> (B, in_channels + len(bins) * channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, channels, 1)) for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(stage(x), size) for stage in self.stages], dim=1)


class PSPHead(DecodeHead):
    """PPM (bins 1, 2, 3, 6) on C4, then a ``bottleneck_kernel`` (3; the official DecoupleSegNet: 1)
    ConvBNReLU to ``channels``.

    Shapes: C4 (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        bottleneck_kernel: int = 3,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.ppm = PyramidPoolingModule(in_channels, channels, bins)
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, channels, bottleneck_kernel)

    def context(self, features: Sequence[Tensor]) -> Tensor:
        return self.bottleneck(self.ppm(features[3]))
