"""Small building blocks shared by the backbones, heads and models."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU with "same" padding for odd kernels.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride).
    Children are named ``conv``, ``bn``, ``relu``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise k x k ConvBNReLU, then pointwise 1x1 ConvBNReLU (mmcv's DepthwiseSeparableConvModule,
    the separable convolution of DeepLabv3+, Chen et al. 2018 Sec. 3.2).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W). Children ``depthwise``, ``pointwise``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels)
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1)


def resize(x: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, *size), align_corners=False (the mmsegmentation default)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
