"""FENet (Boosting Semantic Segmentation via Feature Enhancement, ICLR 2022 submission).

Registered model: ``fenet``. A stride-32 ResNet; 1x1 lateral reductions of the paper's C2..C4
(the backbone's C1..C3) and a pyramid pooling module on C5 (the backbone's C4) give four levels of
``channels`` channels at strides 4, 8, 16, 32. The detail flow runs bottom-up through FEM-D modules,
then the semantic flow top-down through FEM-S modules (Fig. 3); the four levels are upsampled to
stride 4, concatenated and classified. Auxiliary OHEM cross-entropy on backbone stages (Eq. 5).

Facts from the authors' code, where the text is silent (shared/DESIGN.md): the information
extractor is a 9x9 depthwise conv initialised as a box (mean) filter, lateral channels are 128 for
ResNet-18/34 and 256 for ResNet-50/101, PPM bins (1, 2, 3, 6), OHEM threshold 0.7 with at least
100000 pixels kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from fastseg.losses import CrossEntropyLoss, OhemCrossEntropyLoss
from fastseg.models.backbones import BasicBlock, ResNet
from fastseg.models.baselines import encoder_decoder
from fastseg.models.heads import DecodeHead, FCNHead, PyramidPoolingModule
from fastseg.models.layers import ConvBNReLU, resize
from fastseg.models.registry import register_model
from fastseg.models.segmentor import EncoderDecoder, build_on_baseline

FEM_KINDS = ("detail", "semantic")


class InformationExtractor(nn.Module):
    """The detail / structure extractor of Eq. 2: ``F - K * F`` with K a learnable depthwise conv.

    K starts as a ``kernel_size`` x ``kernel_size`` mean-blur kernel (every weight 1 / kernel_size^2),
    zero padding, no bias; so at initialisation the output is F minus its local mean.
    Shapes: (B, channels, h, w) -> (B, channels, h, w).
    """

    def __init__(self, channels: int, kernel_size: int = 9) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.blur = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        nn.init.constant_(self.blur.weight, 1.0 / kernel_size**2)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.blur(x)  # Eq. 2


class FeatureEnhancementModule(nn.Module):
    """FEM-D (``kind="detail"``, Eq. 3) or FEM-S (``kind="semantic"``, Eq. 4).

    Both features go through the module's one :class:`InformationExtractor` E (shared, as in the
    official code); the auxiliary one is resized (bilinear) to the target's size; Phi = 3x3 ConvBNReLU (2C -> C) + a residual BasicBlock aligns the
    concatenation; the result is added to the target (FEM-D) or to the resized auxiliary feature
    (FEM-S); Theta = 3x3 ConvBNReLU refines the sum:

        FEM-D: F_t' = Theta(F_t     + Phi(cat(E(F_t), down(E(F_a)))))     (Eq. 3)
        FEM-S: F_t' = Theta(up(F_a) + Phi(cat(E(F_t), up(E(F_a)))))       (Eq. 4)

    Shapes: target (B, C, h, w), auxiliary (B, C, h', w') -> (B, C, h, w).
    """

    def __init__(self, channels: int, kind: str, kernel_size: int = 9) -> None:
        super().__init__()
        if kind not in FEM_KINDS:
            raise ValueError(f"kind must be one of {FEM_KINDS}, got {kind!r}")
        self.kind = kind
        self.extractor = InformationExtractor(channels, kernel_size)
        self.align = nn.Sequential(ConvBNReLU(2 * channels, channels, 3), BasicBlock(channels, channels))  # Phi
        self.refine = ConvBNReLU(channels, channels, 3)  # Theta

    def forward(self, target: Tensor, auxiliary: Tensor) -> Tensor:
        size = target.shape[-2:]
        extracted = torch.cat([self.extractor(target), resize(self.extractor(auxiliary), size)], 1)
        kept = target if self.kind == "detail" else resize(auxiliary, size)
        return self.refine(kept + self.align(extracted))


class FENetHead(DecodeHead):
    """Laterals + PPM, detail flow (FEM-D, bottom-up), semantic flow (FEM-S, top-down), fusion.

    Level i (stride 4 * 2^i): a 1x1 ConvBNReLU of ``features[i]`` for i < 3, the PPM (bins 1, 2, 3, 6,
    ``channels`` per bin) + a 1x1 ConvBNReLU bottleneck on ``features[3]``.
    Detail flow: ``D_0 = L_0``, ``D_i = FEM-D(L_i, D_{i-1})``; semantic flow: ``S_3 = D_3``,
    ``S_i = FEM-S(D_i, S_{i+1})``. The S_i, upsampled to stride 4 and concatenated, go through a 3x3
    ConvBNReLU (4C -> C) to the context feature.

    Shapes: (C1..C4) of a stride-32 backbone -> logits (B, num_classes, H/4, W/4).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        kernel_size: int = 9,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        if len(in_channels) != 4:
            raise ValueError(f"FENet needs four backbone stages, got in_channels={tuple(in_channels)}")
        self.laterals = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:3])
        self.ppm = PyramidPoolingModule(in_channels[3], channels, bins)
        self.ppm_bottleneck = ConvBNReLU(self.ppm.out_channels, channels, 1)
        self.detail_flow = nn.ModuleList(FeatureEnhancementModule(channels, "detail", kernel_size) for _ in range(3))
        self.semantic_flow = nn.ModuleList(
            FeatureEnhancementModule(channels, "semantic", kernel_size) for _ in range(3)
        )
        self.fuse = ConvBNReLU(4 * channels, channels, 3)

    def context(self, features: Sequence[Tensor]) -> Tensor:
        levels = [lateral(x) for lateral, x in zip(self.laterals, features)]
        levels.append(self.ppm_bottleneck(self.ppm(features[3])))
        for i, fem in enumerate(self.detail_flow, start=1):  # bottom-up: L_i enhanced by D_{i-1}
            levels[i] = fem(levels[i], levels[i - 1])
        for i, fem in reversed(list(enumerate(self.semantic_flow))):  # top-down: D_i enhanced by S_{i+1}
            levels[i] = fem(levels[i], levels[i + 1])
        size = levels[0].shape[-2:]
        return self.fuse(torch.cat([resize(level, size) for level in levels], dim=1))


class FENet(EncoderDecoder):
    """Backbone + :class:`FENetHead` + auxiliary FCN heads on chosen backbone stages, trained with Eq. 5.

    ``forward(images)``: training mode ``{"out": logits (stride 4), "aux<s>": stage-s logits ...}``
    with ``s`` the backbone stage (1..4, layer1..layer4; the paper's C2..C5); eval mode the final
    logits (B, K, H, W) upsampled to the input size, without the auxiliary heads.

    ``loss(outputs, targets)``: ``L = L_p + lambda * sum_s L_s`` (Eq. 5): ``"out"`` is the principal
    cross-entropy, each ``"aux<s>"`` is lambda times the OHEM cross-entropy of that stage.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: FENetHead,
        auxiliary_head: None = None,
        aux_stages: Sequence[int] = (3, 4),
        aux_channels: int = 256,
        aux_weight: float = 1.0,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
        ignore_index: int = 255,
    ) -> None:
        if auxiliary_head is not None:
            raise ValueError("FENet's auxiliary heads are per stage (aux_stages): build its baseline with aux=False")
        stages = tuple(aux_stages)
        if any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"aux_stages must be distinct backbone stages in 1..4, got {stages}")
        super().__init__(backbone, decode_head, None, aux_weight, ignore_index)
        self.stage_heads = nn.ModuleDict({
            f"aux{s}": FCNHead(backbone.out_channels[s - 1], aux_channels, self.num_classes, num_convs=1,
                               concat_input=False, in_index=s - 1, dropout=decode_head.dropout.p)
            for s in stages
        })
        self.criterion = CrossEntropyLoss(ignore_index)
        self.aux_criterion = OhemCrossEntropyLoss(ohem_thresh, ohem_min_kept, ignore_index)

    def forward(self, images: Tensor) -> dict[str, Tensor] | Tensor:
        features = self.backbone(images)
        out = self.decode_head(features)
        if not self.training:
            return resize(out, images.shape[-2:])
        return {"out": out, **{name: head(features) for name, head in self.stage_heads.items()}}

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        losses = {"out": self.criterion(outputs["out"], targets)}  # L_p
        for name in self.stage_heads:
            losses[name] = self.aux_weight * self.aux_criterion(outputs[name], targets)  # lambda * L_s
        losses["total"] = sum(losses.values())  # Eq. 5
        return losses


@register_model(
    "fenet",
    paper='"Boosting Semantic Segmentation via Feature Enhancement" (FENet), ICLR 2022 submission',
    bench_crop=1024,
    # Auxiliary heads on stages 1-2 (strides 4, 8): the stride-32 head of the paper's default (3, 4)
    # cannot fit the 16-pixel label cells of the contract tests' overfit batch; tests/models/test_fenet.py
    # covers them.
    test_options={"backbone": "resnet18", "channels": 16, "aux_channels": 16, "aux_stages": (1, 2)},
)
def fenet(
    num_classes: int,
    backbone: str = "resnet50",
    output_stride: int = 32,
    channels: int | None = None,
    extractor_kernel: int = 9,
    aux: bool = True,
    aux_stages: Sequence[int] = (3, 4),
    aux_weight: float = 1.0,
    **options,
) -> FENet:
    """FENet on a stride-32 ResNet-18/34/50/101.

    Model options besides the baselines' (see :mod:`fastseg.models.baselines`):
      dilations=None     layer1..4 dilations at output stride 32: (1, 1, 2, 4) is the paper's strong
                         baseline (Sec. 4.2, "the last two stages with dilated convolution but keep the
                         strides"), what the recipes use;
      stem_channels=64   with deep_stem, 128 is the official code's 64-64-128 stem (its checkpoints);
      channels=None      lateral / FEM channels; None = 128 for ResNet-18/34, 256 for ResNet-50/101;
      extractor_kernel=9 size of the information extractor's mean-blur kernel;
      aux_stages=(3, 4)  backbone stages with an auxiliary head (the paper's best, SS on its last two
                         stages C4, C5; (1, 2, 3, 4) is its SS(4));
      aux_channels=256   width of each auxiliary head's 3x3 ConvBNReLU;
      aux_weight=1.0     lambda of Eq. 5;
      ohem_thresh=0.7, ohem_min_kept=100000   the auxiliary terms' online hard example mining.
    The principal loss is the plain cross-entropy.
    """

    def head(encoder: ResNet, width: int | None, classes: int, dropout: float) -> FENetHead:
        width = width if width is not None else (128 if encoder.depth < 50 else 256)
        return FENetHead(encoder.out_channels, width, classes, kernel_size=extractor_kernel, dropout=dropout)

    return build_on_baseline(
        FENet, partial(encoder_decoder, head), num_classes, backbone, output_stride=output_stride,
        channels=channels, aux=False, aux_stages=aux_stages if aux else (), aux_weight=aux_weight, **options,
    )
