"""Non-local head (Wang et al. 2018, embedded Gaussian) as the mmsegmentation NLNet baseline configures it."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import ConvBNReLU


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block: ``z = x + W(softmax(theta(x)^T phi(x) / sqrt(d)) g(x))``.

    theta, phi, g are 1x1 convs to ``d = channels // reduction``; W is a 1x1 conv + BN whose BN weight
    starts at zero, so the block starts as the identity (Wang et al. Sec. 4.1).
    Shapes: (B, channels, h, w) -> (B, channels, h, w); attention memory is (B, h*w, h*w).
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.scale = inner ** -0.5
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, d)
        key = self.phi(x).flatten(2)  # (B, d, N)
        value = self.g(x).flatten(2).transpose(1, 2)  # (B, N, d)
        attention = torch.softmax(torch.bmm(query, key) * self.scale, dim=-1)  # (B, N, N)
        y = torch.bmm(attention, value).transpose(1, 2).reshape(batch, -1, height, width)
        return x + self.out(y)


class NonLocalHead(DecodeHead):
    """3x3 ConvBNReLU on C4, non-local block, 3x3 ConvBNReLU, concat with C4, 3x3 ConvBNReLU fuse.

    Shapes: C4 (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, reduction: int = 2, dropout: float = 0.1
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.reduce = ConvBNReLU(in_channels, channels, 3)
        self.non_local = NonLocalBlock(channels, reduction)
        self.post = ConvBNReLU(channels, channels, 3)
        self.fuse = ConvBNReLU(in_channels + channels, channels, 3)

    def context(self, features: Sequence[Tensor]) -> Tensor:
        x = features[3]
        out = self.post(self.non_local(self.reduce(x)))
        return self.fuse(torch.cat([x, out], dim=1))
