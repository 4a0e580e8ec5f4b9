"""CSFRNet (He et al., "Consistent-Separable Feature Representation for Semantic Segmentation", AAAI 2021).

A baseline's backbone and context module, then CSFLM (embeddings + margins, supervised by the
class-aware consistency and smooth losses) and AAM (deformable fusion of the C-S features with the
original features), then the baseline head's dropout + 1x1 classifier.

Registered models: ``csfrnet_fcn``, ``csfrnet_pspnet``, ``csfrnet_nonlocal``, ``csfrnet_deeplabv3plus``
(CSFLM after the FCN convs, the PPM bottleneck, the non-local head and DeepLabv3+'s ASPP, before its
decoder). Options: those of the baselines (see :mod:`fastseg.models.baselines`) plus
  embedding_channels=32  (C', Table 3),
  aam=True               (False: concatenate + 1x1 without deformable aggregation, the CSFLM ablation),
  delta=10.0             (the scale exp(m_k * delta) of Eq. 2),
  binary_loss="lovasz"   ("bce": the CAC(BCE) ablation of Table 4),
  cac_weight=0.2, smooth_weight=0.2  (lambda_2, lambda_3 of Eq. 7; lambda_1 = 1),
  ohem=False, ohem_thresh=0.7, ohem_min_kept=100000  (Table 6's "+OHEM": OCNet's online hard example
                         mining in L_seg, the final output's cross-entropy; the auxiliary CE stays plain).
"""
from __future__ import annotations

from torch import Tensor, nn

from fastseg.losses import ClassAwareConsistencyLoss, CrossEntropyLoss, OhemCrossEntropyLoss
from fastseg.models.aam import AdaptiveFeatureAggregation
from fastseg.models.baselines import deeplabv3plus, fcn, nonlocal_net, pspnet
from fastseg.models.csflm import ConsistentSeparableFeatureLearning
from fastseg.models.heads import DecodeHead
from fastseg.models.layers import resize
from fastseg.models.registry import register_model
from fastseg.models.segmentor import EncoderDecoder, build_on_baseline


class CSFRNet(EncoderDecoder):
    """Backbone -> context module -> CSFLM -> AAM -> dropout + classifier (+ auxiliary FCN head on C3).

    The "original feature" Y that AAM fuses with the C-S features X is the context module's output
    A, the feature CSFLM itself reads: the paper plugs CSFLM "after PPM, Non-local block and ASPP"
    and calls their output the feature "from the backbone"; AAM's output F has the channels C of A
    (F in R^{C x H x W}); and in the CSFLM-only ablation the C-S features are concatenated "into the
    original features" and mapped back to C channels by the 1x1 fuse -- 3x3 conv (C -> C) + 1x1
    embeddings + 1x1 margin + 1x1 fuse (C + C' -> C) is 2.66M parameters at C = 512, C' = 32, what
    Table 2 reports for every head (a 2048-channel C4 input would not fit it). The classifier sees
    the fused feature F, with the baseline head's own dropout and 1x1 classifier (F has its width).

    DeepLabv3+: CSFLM and AAM sit on the ASPP output at stride 8 and F goes through the head's
    decoder (stride 4) before the classifier: the paper plugs CSFLM "after ASPP", and Table 2 adds
    the same 10.88 GFLOPs (multiply-adds) at 512x512 to every head, the cost of CSFLM at stride 8.

    ``forward(images)``: training mode returns ``{"out", "embeddings", "margins"}`` (+ ``"aux"``)
    at the head's feature resolution; eval mode the logits (B, K, H, W) at the input size, computing
    the embeddings but not the margins.
    ``loss(outputs, targets)``: ``{"out": L_seg, "aux": aux_weight * CE, "cac": cac_weight * L_cac,
    "smooth": smooth_weight * L_smooth, "total": sum}`` (Eq. 7); L_seg is the cross-entropy, or with
    ``ohem`` the OHEM cross-entropy (keep pixels whose true-class probability is below ``ohem_thresh``,
    at least ``ohem_min_kept``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        auxiliary_head: DecodeHead | None = None,
        embedding_channels: int = 32,
        aam: bool = True,
        delta: float = 10.0,
        binary_loss: str = "lovasz",
        cac_weight: float = 0.2,
        smooth_weight: float = 0.2,
        ohem: bool = False,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(backbone, decode_head, auxiliary_head, aux_weight, ignore_index)
        if ohem:
            self.segmentation_loss = OhemCrossEntropyLoss(ohem_thresh, ohem_min_kept, ignore_index)
        else:
            self.segmentation_loss = CrossEntropyLoss(ignore_index)
        self.csflm = ConsistentSeparableFeatureLearning(decode_head.channels, embedding_channels)
        self.aggregation = AdaptiveFeatureAggregation(embedding_channels, decode_head.channels, deformable=aam)
        self.consistency_loss = ClassAwareConsistencyLoss(self.num_classes, delta, binary_loss, ignore_index)
        self.cac_weight = cac_weight
        self.smooth_weight = smooth_weight

    def forward(self, images: Tensor) -> dict[str, Tensor] | Tensor:
        features = self.backbone(images)
        head = self.decode_head
        context = head.context(features)  # A, also the original feature Y of AAM (DeepLabv3+: the ASPP output)
        embeddings, margins = self.csflm(context)  # B (the C-S features X), C
        fused = head.decode(self.aggregation(embeddings, context), features)  # F (DeepLabv3+: through its decoder)
        out = head.classifier(head.dropout(fused))
        if not self.training:
            return resize(out, images.shape[-2:])
        outputs = {"out": out, "embeddings": embeddings, "margins": margins}
        if self.auxiliary_head is not None:
            outputs["aux"] = self.auxiliary_head(features)
        return outputs

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        losses = {"out": self.segmentation_loss(outputs["out"], targets)}  # L_seg
        if "aux" in outputs:
            losses["aux"] = self.aux_weight * self.cross_entropy(outputs["aux"], targets)
        loss_cac, loss_smooth = self.consistency_loss(outputs["embeddings"], outputs["margins"], targets)
        losses["cac"] = self.cac_weight * loss_cac  # Eq. 4
        losses["smooth"] = self.smooth_weight * loss_smooth  # Eq. 5
        losses["total"] = sum(losses.values())  # Eq. 7 (+ the auxiliary head's CE)
        return losses


PAPER = 'He et al., "Consistent-Separable Feature Representation for Semantic Segmentation", AAAI 2021'
FUSED_OPS = (
    "class_avg_pool", "class_avg_pool_backward", "gaussian_center_distance", "gaussian_center_distance_backward",
    "lovasz_hinge", "lovasz_hinge_backward", "deform_conv2d", "deform_conv2d_backward",
)
TINY = {"backbone": "resnet18", "channels": 32, "aux_channels": 16, "embedding_channels": 16}

@register_model(
    "csfrnet_fcn", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY
)
def csfrnet_fcn(num_classes: int, backbone: str = "resnet50", **options) -> CSFRNet:
    """CSFRNet on FCN: CSFLM after the FCN head's convs."""
    return build_on_baseline(CSFRNet, fcn, num_classes, backbone, **options)


@register_model(
    "csfrnet_pspnet", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY
)
def csfrnet_pspnet(num_classes: int, backbone: str = "resnet50", **options) -> CSFRNet:
    """CSFRNet on PSPNet: CSFLM after the PPM bottleneck."""
    return build_on_baseline(CSFRNet, pspnet, num_classes, backbone, **options)


@register_model(
    "csfrnet_nonlocal", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY
)
def csfrnet_nonlocal(num_classes: int, backbone: str = "resnet50", **options) -> CSFRNet:
    """CSFRNet on the Non-local network: CSFLM after the non-local head."""
    return build_on_baseline(CSFRNet, nonlocal_net, num_classes, backbone, **options)


@register_model(
    "csfrnet_deeplabv3plus", paper=PAPER, fused_ops=FUSED_OPS, test_options=TINY, bench_crop=769
)
def csfrnet_deeplabv3plus(num_classes: int, backbone: str = "resnet50", **options) -> CSFRNet:
    """CSFRNet on DeepLabv3+ (the paper's final model): CSFLM + AAM after ASPP (stride 8), then the decoder."""
    return build_on_baseline(CSFRNet, deeplabv3plus, num_classes, backbone, **options)
