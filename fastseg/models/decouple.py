"""DecoupleSegNet (Li et al., ECCV 2020): decoupled body and edge features and supervision.

Registered models: ``decouple_fcn``, ``decouple_pspnet``, ``decouple_deeplabv3plus``.

The module sits on a baseline head's context feature F (``decode_head.forward_features``: the FCN
convs, the PSP bottleneck, the ASPP output), at the backbone's output stride:

  - body generation (Sec. 3.2, Eq. 1): two depthwise 3x3 stride-2 ConvBNReLU compress F, the result
    is upsampled back, concatenated with F, and a 3x3 conv predicts a 2-channel flow (in pixels of F);
    ``F_body = flow_warp(F, flow)`` (:func:`fastseg.ops.flow_warp`, bilinear, border padding);
  - edge preservation (Sec. 3.3, Eq. 2): ``F_edge = gamma((F - F_body) || F_fine)`` at stride 4, with
    F_fine the 48-channel 1x1 ConvBNReLU of C1 (as DeepLabv3+'s skip) and gamma a 1x1 conv;
  - final feature ``F_hat = F_body + F_edge`` (Sec. 3.1, F_body upsampled to stride 4), concatenated
    with F (upsampled) and fused by two 3x3 ConvBNReLU as in DeepLabv3+'s decoder; the baseline
    head's dropout + 1x1 classifier give the final logits.

So ``decouple_deeplabv3plus`` is the DeepLabv3 (ASPP) baseline whose DeepLabv3+ decoder is the
decoupled module, as in Fig. 2(b); ``decouple_fcn`` / ``decouple_pspnet`` put the same module after
the FCN convs / the PPM (Sec. 3.5: "F_fine shares the same design with Deeplabv3+").

Supervision (Eq. 3-5), weights lambda_1 = lambda_2 = lambda_3 = 1, lambda_4 = 25, lambda_5 = 1:
  ``body``: relaxed boundary loss on the body logits (a 3x3 ConvBNReLU + classifier on F_body);
  ``edge_bce``: class-balanced BCE of the edge logits (3x3 ConvBNReLU to 48 + 1x1 on F_edge)
  against the labels' boundary (radius 2);
  ``edge_ohem``: boundary-aware OHEM CE of the final logits over pixels with sigmoid(edge) > 0.8,
  the 10% hardest per image;
  ``out``: cross-entropy of the final logits; ``aux`` (off by default): the baselines' C3 head.

Followed from the official code (lxtGH/DecoupleSegNets), where the paper is silent: the FCN head is
one 3x3 ConvBNReLU C4 -> 256 and the PSP bottleneck a 1x1 ConvBNReLU (``decouple_fcn`` /
``decouple_pspnet``); the ASPP width 256; half of each epoch's samples drawn class-uniformly
(``data.class_uniform: 0.5`` in the Cityscapes recipes; the official crop centred on a pixel of the
drawn class is not done); the 64-64-128 deep stem of its checkpoints as an option
(``deep_stem=True, stem_channels=128``).

Where we follow the paper rather than the official code:
  - L_final (lambda_3) is the plain cross-entropy of Eq. 3; the official training scripts pass
    ``--ohem`` and use an OHEM cross-entropy there;
  - L_edge-OHEM keeps, per image, the 10% hardest pixels with edge probability > 0.8 (Eq. 5's t_b,
    K / N); the official code feeds the pixels with edge probability > 0.8 to its OHEM criterion
    (probability threshold, minimum kept) instead;
  - the relaxed boundary loss (L_body) has no per-image class weights; the official ``--jointwtborder``
    loss weights each image's classes by their frequency;
  - edge targets: a border between a class and ignored pixels, and the image border, are no edges
    (ignored pixels take no part); the official edge maps come from a zero-padded one-hot with 255
    as no class, so image borders and ignore borders are edges there;
  - the warp samples with border padding (a flow pointing outside takes the nearest border pixel);
    the official ``grid_sample`` call uses its default zero padding;
  - the recipes train from ImageNet weights with lr 0.01 and poly 0.9 (Sec. 4); the official scripts
    fine-tune from a trained baseline (``--snapshot``) with lr 0.005 and poly power 1.0;
  - the backbone dilates the first block of a dilated stage at the previous stage's rate (see
    :class:`~fastseg.models.backbones.ResNet`); the official variant "D" sets every block's 3x3 of
    layer3 / layer4 to 2 / 4, the first one included.

Differences from the official code, on purpose: the edge logits reach the with-logits BCE without a
sigmoid (the official code applies it twice); the warp's grid and its sampling share one
``align_corners`` convention (the official code mixes True and False); lambda_4 = 25 as in the paper
(the code uses 20); the strided depthwise convs are padded (the code's unpadded ones turn a 8x8
map into 1x1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastseg.losses import BoundaryOhemCrossEntropyLoss, EdgeBCELoss, RelaxedBoundaryLoss
from fastseg.models.baselines import deeplabv3, fcn, pspnet
from fastseg.models.heads import DecodeHead, FCNHead
from fastseg.models.layers import ConvBNReLU, resize
from fastseg.models.registry import ModelBuilder, register_model
from fastseg.models.segmentor import EncoderDecoder, build_on_baseline
from fastseg.ops import FlowWarp


class BodyGeneration(nn.Module):
    """Body generation (Sec. 3.2): a learned flow field and the feature warped by it (Eq. 1).

    ``flow_field(F)``: ``conv3x3(F || up(down(F)))`` with ``down`` = ``num_downsamples`` depthwise 3x3
    stride-2 ConvBNReLU (the paper's best: 2, total stride 4) and ``up`` bilinear; channel 0 = dx,
    1 = dy, in pixels of F. ``forward(F) = flow_warp(F, flow_field(F))``, the bilinear sample of F at
    p + flow(p) (border padding: a flow pointing outside samples the nearest border pixel).
    Shapes: (B, C, h, w) -> (B, C, h, w); the flow is (B, 2, h, w).
    """

    def __init__(self, channels: int, num_downsamples: int = 2) -> None:
        super().__init__()
        self.down = nn.Sequential(
            *(ConvBNReLU(channels, channels, 3, stride=2, groups=channels) for _ in range(num_downsamples))
        )
        self.flow = nn.Conv2d(2 * channels, 2, 3, padding=1, bias=False)
        self.warp = FlowWarp(padding_mode="border", align_corners=True)

    def flow_field(self, x: Tensor) -> Tensor:
        low = resize(self.down(x), x.shape[-2:])
        return self.flow(torch.cat([x, low], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.warp(x, self.flow_field(x))  # Eq. 1


class EdgePreservation(nn.Module):
    """Edge preservation (Sec. 3.3, Eq. 2): ``F_edge = gamma(up(F - F_body) || F_fine)``.

    ``F_fine``: 1x1 ConvBNReLU of C1 to ``fine_channels`` (48, DeepLabv3+'s skip); ``gamma``: 1x1 conv.
    Shapes: residual (B, C, h, w), C1 (B, c1_channels, H/4, W/4) -> (B, C, H/4, W/4).
    """

    def __init__(self, channels: int, c1_channels: int, fine_channels: int = 48) -> None:
        super().__init__()
        self.fine = ConvBNReLU(c1_channels, fine_channels, 1)
        self.fuse = nn.Conv2d(channels + fine_channels, channels, 1, bias=False)

    def forward(self, residual: Tensor, c1: Tensor) -> Tensor:
        return self.fuse(torch.cat([resize(residual, c1.shape[-2:]), self.fine(c1)], dim=1))  # Eq. 2


class DecoupleSegNet(EncoderDecoder):
    """A baseline (backbone + context head) with the decoupled body/edge module (see the module docstring).

    ``forward(images)`` with images (B, 3, H, W):
      - training mode: ``{"out": (B,K,H/4,W/4), "body": (B,K,h,w), "edge": (B,1,H/4,W/4)}`` (+ ``"aux"``),
        h, w = the backbone's output stride;
      - eval mode: the final logits (B, K, H, W); the body and edge heads are not run.
    ``loss(outputs, targets)``: ``{"body", "edge_bce", "edge_ohem", "out", ("aux"), "total"}``, each
    already weighted (Eq. 3-4).

    Args:
        backbone, decode_head, auxiliary_head, aux_weight, ignore_index: as :class:`EncoderDecoder`;
            ``decode_head.forward_features`` gives F, its dropout and classifier the final logits.
        fine_channels: channels of F_fine (48).
        edge_channels: hidden channels of the edge head (48).
        relax_kernel: window of the body's label relaxation (3: one pixel around each border).
        edge_radius: radius of the boundary ground truth (2).
        edge_thresh, keep_ratio: t_b = 0.8 and K / N = 0.1 of the boundary OHEM (Eq. 5).
        body_weight, edge_weight: lambda_1 and lambda_2 of Eq. 3 (lambda_3 of the final CE is 1).
        bce_weight, ohem_weight: lambda_4 = 25 and lambda_5 = 1 of Eq. 4.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        auxiliary_head: DecodeHead | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        fine_channels: int = 48,
        edge_channels: int = 48,
        relax_kernel: int = 3,
        edge_radius: int = 2,
        edge_thresh: float = 0.8,
        keep_ratio: float = 0.1,
        body_weight: float = 1.0,
        edge_weight: float = 1.0,
        bce_weight: float = 25.0,
        ohem_weight: float = 1.0,
    ) -> None:
        super().__init__(backbone, decode_head, auxiliary_head, aux_weight, ignore_index)
        channels = decode_head.channels
        dropout = decode_head.dropout.p
        self.body_generation = BodyGeneration(channels)
        self.edge_preservation = EdgePreservation(channels, backbone.out_channels[0], fine_channels)
        self.fuse = nn.Sequential(ConvBNReLU(2 * channels, channels, 3), ConvBNReLU(channels, channels, 3))
        self.body_head = FCNHead(channels, channels, self.num_classes, num_convs=1, concat_input=False, in_index=0,
                                 dropout=dropout)
        self.edge_head = FCNHead(channels, edge_channels, 1, num_convs=1, concat_input=False, in_index=0,
                                 dropout=dropout)
        self.body_weight = body_weight
        self.body_loss = RelaxedBoundaryLoss(relax_kernel, ignore_index)
        self.edge_bce_loss = EdgeBCELoss(edge_radius, ignore_index, loss_weight=edge_weight * bce_weight)
        self.edge_ohem_loss = BoundaryOhemCrossEntropyLoss(
            edge_thresh, keep_ratio, ignore_index, loss_weight=edge_weight * ohem_weight
        )

    def decouple(self, context: Tensor, c1: Tensor) -> tuple[Tensor, Tensor]:
        """F (B,C,h,w), C1 (B,c1,H/4,W/4) -> F_body (B,C,h,w), F_edge (B,C,H/4,W/4) (Eq. 1-2)."""
        body = self.body_generation(context)
        return body, self.edge_preservation(context - body, c1)

    def forward(self, images: Tensor) -> dict[str, Tensor] | Tensor:
        features = self.backbone(images)
        context = self.decode_head.forward_features(features)  # F
        body, edge = self.decouple(context, features[0])
        size = edge.shape[-2:]
        refined = resize(body, size) + edge  # F_hat = F_body + phi(F - F_body) (Sec. 3.1)
        fused = self.fuse(torch.cat([resize(context, size), refined], dim=1))
        out = self.decode_head.classifier(self.decode_head.dropout(fused))
        if not self.training:
            return resize(out, images.shape[-2:])
        outputs = {"out": out, "body": self.body_head([body]), "edge": self.edge_head([edge])}
        if self.auxiliary_head is not None:
            outputs["aux"] = self.auxiliary_head(features)
        return outputs

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        losses = {
            "body": self.body_weight * self.body_loss(outputs["body"], targets),  # lambda_1 L_body
            "edge_bce": self.edge_bce_loss(outputs["edge"], targets),  # lambda_2 lambda_4 L_bce
            "edge_ohem": self.edge_ohem_loss(outputs["out"], outputs["edge"], targets),  # lambda_2 lambda_5 L_ce
            "out": self.cross_entropy(outputs["out"], targets),  # lambda_3 L_final
        }
        if "aux" in outputs:
            losses["aux"] = self.aux_weight * self.cross_entropy(outputs["aux"], targets)
        losses["total"] = sum(losses.values())
        return losses


PAPER = 'Li et al., "Improving Semantic Segmentation via Decoupled Body and Edge Supervision", ECCV 2020'
FUSED_OPS = ("flow_warp", "flow_warp_backward")
TINY = {"backbone": "resnet18", "channels": 32}

def decoupled(baseline: ModelBuilder, num_classes: int, backbone: str = "resnet50", **options) -> DecoupleSegNet:
    """The registered ``baseline`` builder's backbone and heads with the decoupled module on its context.

    ``channels`` defaults to 256 (the official ASPP width) and ``aux`` to False (Eq. 3 has no C3 loss);
    the options of :class:`DecoupleSegNet` go to it, the others to the baseline (see :func:`build_on_baseline`).
    """
    options = {"channels": 256, "aux": False, **options}
    return build_on_baseline(DecoupleSegNet, baseline, num_classes, backbone, **options)


@register_model(
    "decouple_fcn", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY
)
def decouple_fcn(num_classes: int, backbone: str = "resnet50", **options) -> DecoupleSegNet:
    """DecoupleSegNet on FCN: the module after the official FCN head, one 3x3 ConvBNReLU C4 -> 256
    (``num_convs=1``; the baseline's default is two)."""
    return decoupled(fcn, num_classes, backbone, **{"num_convs": 1, **options})


@register_model(
    "decouple_pspnet", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY
)
def decouple_pspnet(num_classes: int, backbone: str = "resnet50", **options) -> DecoupleSegNet:
    """DecoupleSegNet on PSPNet: the module after the PPM and the official 1x1 bottleneck
    (``bottleneck_kernel=1``; the baseline's default is 3x3)."""
    return decoupled(pspnet, num_classes, backbone, **{"bottleneck_kernel": 1, **options})


@register_model(
    "decouple_deeplabv3plus", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY, bench_crop=832
)
def decouple_deeplabv3plus(num_classes: int, backbone: str = "resnet50", **options) -> DecoupleSegNet:
    """DecoupleSegNet on DeepLabv3+ (Fig. 2(b)): the module after ASPP, in place of DeepLabv3+'s decoder."""
    return decoupled(deeplabv3, num_classes, backbone, **options)
