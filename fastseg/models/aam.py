"""CSFRNet's Adaptive feature Aggregation Module (AAM, He et al. AAAI 2021, Fig. 2 and Eq. 6)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastseg.models.layers import ConvBNReLU
from fastseg.ops import DeformConv2d


class AdaptiveFeatureAggregation(nn.Module):
    """Fuse the C-S features X with the original features Y into the final feature F.

    AAM (``deformable=True``): a 3x3 conv on concat(X, Y) predicts the offsets E (2*k*k channels),
    two k x k deformable convolutions sharing E aggregate each input spatially,
    X' = W_a(X, E), Y' = W_b(Y, E) (Eq. 6), and a 1x1 ConvBNReLU maps concat(X', Y') to F.
    ``deformable=False`` is the paper's CSFLM-only ablation (Tables 1-5: "we directly concatenate
    the C-S features into the original features"): the same 1x1 ConvBNReLU on concat(X, Y).

    The offset conv starts at zero, so W_a and W_b start as plain convolutions (Dai et al. 2017).
    W_a and W_b keep their inputs' channels and have no bias (the BatchNorm of the fuse follows).

    Shapes: X (B, cs_channels, h, w), Y (B, channels, h, w) -> F (B, channels, h, w).
    """

    def __init__(self, cs_channels: int, channels: int, kernel_size: int = 3, deformable: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.deformable = deformable
        if deformable:
            padding = kernel_size // 2
            self.offset = nn.Conv2d(cs_channels + channels, 2 * kernel_size**2, 3, padding=1)  # E
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)
            self.cs_aggregate = DeformConv2d(cs_channels, cs_channels, kernel_size, padding=padding, bias=False)  # W_a
            self.aggregate = DeformConv2d(channels, channels, kernel_size, padding=padding, bias=False)  # W_b
        self.fuse = ConvBNReLU(cs_channels + channels, channels, 1)

    def forward(self, cs_features: Tensor, features: Tensor) -> Tensor:
        if not self.deformable:
            return self.fuse(torch.cat([cs_features, features], dim=1))
        offset = self.offset(torch.cat([cs_features, features], dim=1))
        aggregated = [self.cs_aggregate(cs_features, offset), self.aggregate(features, offset)]  # Eq. 6
        return self.fuse(torch.cat(aggregated, dim=1))
