"""The baselines registered in the model zoo: FCN, PSPNet, DeepLabv3, DeepLabv3+ and Non-local.

Every builder takes ``num_classes``, ``backbone`` ("resnet18/34/50/101") and the options
  output_stride=8, deep_stem=False, multi_grid=None, stem_channels=64, dilations=None
                       (the backbone, see :class:`ResNet`),
  pretrained=None      (a checkpoint path, URL or state dict for :func:`load_pretrained`),
  channels=512         (decode-head channels),
  aux=True, aux_channels=256, aux_weight=0.4  (the auxiliary FCN head on C3),
  ignore_index=255, dropout=0.1,
and the head options of each builder below. The defaults build the networks whose sizes CSFRNet's
Table 2 reports (ResNet-50, 512x512, with ``deep_stem=True``): FCN 37.70M, PSPNet 48.98M, Non-local
50.02M, DeepLabv3+ 43.59M parameters (``tests/models/test_table2_complexity.py``).
PSPNet's and the DeepLabs' pooled branches hold BatchNorm on 1x1 maps, so training needs batch >= 2
(per process, or SyncBatchNorm), as in mmsegmentation.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from fastseg.models.backbones import ResNet, build_backbone
from fastseg.models.heads import (
    AuxiliaryHead,
    DecodeHead,
    DeepLabV3Head,
    DeepLabV3PlusHead,
    FCNHead,
    NonLocalHead,
    PSPHead,
    aspp_rates,
)
from fastseg.models.registry import register_model
from fastseg.models.segmentor import EncoderDecoder

# tiny options of the contract tests (tests/models/test_paper_models.py)
TINY = {"backbone": "resnet18", "channels": 32, "aux_channels": 16}

HeadFactory = Callable[[ResNet, int, int, float], DecodeHead]


def encoder_decoder(
    make_head: HeadFactory,
    num_classes: int,
    backbone: str = "resnet50",
    output_stride: int = 8,
    deep_stem: bool = False,
    multi_grid: Sequence[int] | None = None,
    stem_channels: int = 64,
    dilations: Sequence[int] | None = None,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
    channels: int = 512,
    aux: bool = True,
    aux_channels: int = 256,
    aux_weight: float = 0.4,
    ignore_index: int = 255,
    dropout: float = 0.1,
) -> EncoderDecoder:
    """Backbone + ``make_head(backbone, channels, num_classes, dropout)`` (+ auxiliary FCN head on C3)."""
    encoder = build_backbone(
        backbone, pretrained, output_stride=output_stride, deep_stem=deep_stem, multi_grid=multi_grid,
        stem_channels=stem_channels, dilations=dilations,
    )
    head = make_head(encoder, channels, num_classes, dropout)
    auxiliary = AuxiliaryHead(encoder.out_channels[2], num_classes, aux_channels, dropout) if aux else None
    return EncoderDecoder(encoder, head, auxiliary, aux_weight=aux_weight, ignore_index=ignore_index)


@register_model(
    "fcn", baseline=True, test_options=TINY,
    paper='Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015',
)
def fcn(
    num_classes: int, backbone: str = "resnet50", num_convs: int = 2, concat_input: bool = False, **options
) -> EncoderDecoder:
    """FCN: ``num_convs`` 3x3 convs on C4 (CSFRNet's Table 2 FCN); ``concat_input=True`` adds
    mmsegmentation's concat with C4 and 3x3 fuse (+11.8M parameters, +48 GMACs at 512x512)."""
    return encoder_decoder(
        lambda enc, ch, k, p: FCNHead(enc.out_channels[3], ch, k, num_convs, concat_input, dropout=p),
        num_classes, backbone, **options,
    )


@register_model(
    "pspnet", baseline=True, test_options=TINY,
    paper='Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017',
)
def pspnet(num_classes: int, backbone: str = "resnet50", bottleneck_kernel: int = 3, **options) -> EncoderDecoder:
    """PSPNet: pyramid pooling (bins 1, 2, 3, 6) on C4, a ``bottleneck_kernel`` ConvBNReLU after it."""
    return encoder_decoder(
        lambda enc, ch, k, p: PSPHead(enc.out_channels[3], ch, k, dropout=p, bottleneck_kernel=bottleneck_kernel),
        num_classes, backbone, **options,
    )


@register_model(
    "deeplabv3", baseline=True, test_options=TINY,
    paper='Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv 2017',
)
def deeplabv3(num_classes: int, backbone: str = "resnet50", **options) -> EncoderDecoder:
    """DeepLabv3: ASPP on C4 with rates (6, 12, 18) scaled to the output stride."""
    return encoder_decoder(
        lambda enc, ch, k, p: DeepLabV3Head(enc.out_channels[3], ch, k, aspp_rates(enc.output_stride), p),
        num_classes, backbone, **options,
    )


@register_model(
    "deeplabv3plus", baseline=True, test_options=TINY, bench_crop=769,
    paper='Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018',
)
def deeplabv3plus(num_classes: int, backbone: str = "resnet50", separable: bool = True, **options) -> EncoderDecoder:
    """DeepLabv3+: ASPP on C4, decoder with the 48-channel stride-4 skip from C1; depthwise-separable
    ASPP and decoder (the DeepLabv3+ paper's, CSFRNet's Table 2); ``separable=False``: plain 3x3
    convs (+19.0M parameters, +132 GMACs at 512x512)."""
    return encoder_decoder(
        lambda enc, ch, k, p: DeepLabV3PlusHead(
            enc.out_channels[3], enc.out_channels[0], ch, k, aspp_rates(enc.output_stride), dropout=p,
            separable=separable,
        ),
        num_classes, backbone, **options,
    )


@register_model(
    "nonlocal", baseline=True, test_options=TINY,
    paper='Wang et al., "Non-local Neural Networks", CVPR 2018',
)
def nonlocal_net(num_classes: int, backbone: str = "resnet50", **options) -> EncoderDecoder:
    """Non-local network: an embedded-Gaussian non-local block between two 3x3 convs on C4."""
    return encoder_decoder(
        lambda enc, ch, k, p: NonLocalHead(enc.out_channels[3], ch, k, dropout=p), num_classes, backbone, **options
    )
