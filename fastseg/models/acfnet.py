"""ACFNet (Zhang et al., ICCV 2019): a coarse-to-fine head with the Attentional Class Feature module.

Registered model: ``acfnet``. Base network = dilated ResNet + ASPP (512 channels) -> coarse
segmentation; the ACF module turns the softmax of the coarse logits and the base feature into the
attentional class feature, which is concatenated with the base feature for the fine segmentation.

The class center is the paper's probability-weighted mean of the features (Eq. 2), computed by the
fused ops of :mod:`fastseg.ops.soft_class_pool`, not the "max - energy" channel softmax of some
public ports.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from fastseg.losses import CrossEntropyLoss, OhemCrossEntropyLoss
from fastseg.models.backbones import ResNet
from fastseg.models.baselines import encoder_decoder
from fastseg.models.heads import AuxiliaryHead, DeepLabV3Head, aspp_rates
from fastseg.models.layers import ConvBNReLU, resize
from fastseg.models.registry import register_model
from fastseg.models.segmentor import EncoderDecoder, build_on_baseline
from fastseg.ops import attentional_class_feature, soft_class_pool

ACF_MODES = ("sum", "concat", "center")


class AttentionalClassFeatureModule(nn.Module):
    """The ACF module (Sec. 3.1): Class Center Block + Class Attention Block + a 1x1 refinement.

    Class Center Block: a 1x1 ConvBNReLU reduces the base feature to ``reduced_channels`` (C'),
    then the class centers are the coarse-probability-weighted means of the reduced feature (Eq. 2).
    Class Attention Block, by ``mode`` (the variants of the paper's Table 1):
      - ``"sum"`` (the paper's default, ACF(sum)): ``F_a^j = sum_i P^{i,j} F^i_class`` (Eq. 3), Eq. 2 and
        Eq. 3 fused in :func:`fastseg.ops.attentional_class_feature` (no (B, K, C', H, W) tensor);
      - ``"concat"`` (ACF(concat), Eq. 5): ``F_a^j = concat_i P^{i,j} F^i_class``, K * C' channels;
      - ``"center"`` (the class-center ablation): the K centers, concatenated and broadcast to every
        pixel, K * C' channels.
    ``"concat"`` and ``"center"`` take the centers from :func:`fastseg.ops.soft_class_pool`.
    A 1x1 ConvBNReLU refines the attentional class feature to ``out_channels``.

    Shapes: feature (B, in_channels, h, w), probs (B, K, h, w) -> (B, out_channels, h, w).
    """

    def __init__(
        self, in_channels: int, num_classes: int, reduced_channels: int = 512, out_channels: int = 512,
        mode: str = "sum",
    ) -> None:
        super().__init__()
        if mode not in ACF_MODES:
            raise ValueError(f"mode must be one of {ACF_MODES}, got {mode!r}")
        self.mode = mode
        self.reduce = ConvBNReLU(in_channels, reduced_channels, 1)
        attended_channels = reduced_channels if mode == "sum" else num_classes * reduced_channels
        self.refine = ConvBNReLU(attended_channels, out_channels, 1)

    def forward(self, feature: Tensor, probs: Tensor) -> Tensor:
        reduced = self.reduce(feature)
        if self.mode == "sum":
            attended = attentional_class_feature(reduced, probs)  # Eq. 2 then Eq. 3, fused
        else:
            centers = soft_class_pool(reduced, probs)  # (B, K, C'), Eq. 2
            batch, _, height, width = probs.shape
            if self.mode == "concat":  # Eq. 5: P^{i,j} F^i_class for every class i, concatenated
                attended = probs.unsqueeze(2) * centers[..., None, None]
            else:
                attended = centers[..., None, None].expand(-1, -1, -1, height, width)
            attended = attended.reshape(batch, -1, height, width)
        return self.refine(attended)


class ACFHead(DeepLabV3Head):
    """ASPP on C4 -> base feature -> coarse logits; ACF module; concat with the base feature, 1x1
    ConvBNReLU, fine logits.

    The inherited ``classifier`` gives the coarse logits, ``fine_classifier`` the fine ones (both
    after the shared Dropout2d). :meth:`forward` returns the fine logits only.

    Shapes: C4 (B, in_channels, h, w) -> coarse and fine logits (B, num_classes, h, w).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        rates: Sequence[int] = (12, 24, 36),
        acf_channels: int = 512,
        mode: str = "sum",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, rates, dropout)
        self.acf = AttentionalClassFeatureModule(channels, num_classes, acf_channels, acf_channels, mode)
        self.fuse = ConvBNReLU(channels + acf_channels, channels, 1)
        self.fine_classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_coarse_fine(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Backbone features (C1..C4) -> (coarse logits, fine logits), each (B, num_classes, h, w)."""
        base = self.forward_features(features)
        coarse = self.classifier(self.dropout(base))
        attended = self.acf(base, torch.softmax(coarse, dim=1))
        fine = self.fine_classifier(self.dropout(self.fuse(torch.cat([base, attended], dim=1))))
        return coarse, fine

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.forward_coarse_fine(features)[1]


class ACFNet(EncoderDecoder):
    """Backbone + :class:`ACFHead` (+ auxiliary FCN head on C3), trained with Eq. 4.

    ``forward(images)``: training mode ``{"out": fine, "coarse": coarse, "aux": aux}`` at stride
    ``output_stride``; eval mode the fine logits (B, K, H, W) upsampled to the input size.

    ``loss(outputs, targets)``: ``L = lambda_a l_a + lambda_c l_c + lambda_f l_f`` (Eq. 4) with
    lambda = (0.4, 0.6, 0.7) by default, returned as ``{"aux", "coarse", "out", "total"}``; each term
    is the same criterion: the plain cross-entropy, with ``class_balanced`` inverse-frequency class
    weights (the paper's Sec. 3.2), or with ``ohem`` online bootstrapping (Sec. 4.4, "OB": pixels whose
    true-class probability is below ``ohem_thresh``, at least ``ohem_min_kept``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: ACFHead,
        auxiliary_head: AuxiliaryHead | None = None,
        aux_weight: float = 0.4,
        coarse_weight: float = 0.6,
        fine_weight: float = 0.7,
        class_balanced: bool = False,
        ohem: bool = False,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(backbone, decode_head, auxiliary_head, aux_weight, ignore_index)
        if class_balanced and ohem:
            raise ValueError("choose one of class_balanced and ohem: online bootstrapping has no class weights")
        if ohem:
            self.criterion = OhemCrossEntropyLoss(ohem_thresh, ohem_min_kept, ignore_index)
        else:
            self.criterion = CrossEntropyLoss(ignore_index, class_balanced)
        self.coarse_weight = coarse_weight
        self.fine_weight = fine_weight

    def forward(self, images: Tensor) -> dict[str, Tensor] | Tensor:
        features = self.backbone(images)
        if not self.training:
            return resize(self.decode_head(features), images.shape[-2:])
        coarse, fine = self.decode_head.forward_coarse_fine(features)
        outputs = {"out": fine, "coarse": coarse}
        if self.auxiliary_head is not None:
            outputs["aux"] = self.auxiliary_head(features)
        return outputs

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        weights = {"aux": self.aux_weight, "coarse": self.coarse_weight, "out": self.fine_weight}
        losses = {name: weight * self.criterion(outputs[name], targets)
                  for name, weight in weights.items() if name in outputs}  # Eq. 4
        losses["total"] = sum(losses.values())
        return losses


@register_model(
    "acfnet",
    paper='Zhang et al., "ACFNet: Attentional Class Feature Network for Semantic Segmentation", ICCV 2019',
    fused_ops=("attentional_class_feature", "attentional_class_feature_backward"),
    bench_crop=769,
    test_options={"backbone": "resnet18", "channels": 32, "acf_channels": 16, "aux_channels": 16},
)
def acfnet(
    num_classes: int, backbone: str = "resnet50", acf_channels: int = 512, acf_mode: str = "sum", **options
) -> ACFNet:
    """ACFNet on a dilated ResNet with ASPP (``channels`` = 512, the paper's widened ASPP).

    Model options besides the baselines' (see :mod:`fastseg.models.baselines`):
      acf_channels=512   C' of the Class Center Block and the ACF module's output channels (Sec. 4.1);
      acf_mode="sum"     "sum" (Eq. 3), "concat" (Eq. 5) or "center" (Table 1's variants);
      aux_weight=0.4, coarse_weight=0.6, fine_weight=0.7   lambda_a, lambda_c, lambda_f of Eq. 4;
      class_balanced=False   inverse-frequency class weights in every CE term (the paper's Sec. 3.2);
      ohem=False, ohem_thresh=0.7, ohem_min_kept=100000   online bootstrapping (Sec. 4.4, "OB").
    """

    def head(encoder: ResNet, channels: int, classes: int, dropout: float) -> ACFHead:
        rates = aspp_rates(encoder.output_stride)
        return ACFHead(encoder.out_channels[3], channels, classes, rates, acf_channels, acf_mode, dropout)

    return build_on_baseline(ACFNet, partial(encoder_decoder, head), num_classes, backbone, **options)
