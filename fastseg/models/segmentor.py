"""EncoderDecoder: backbone -> decode head (+ auxiliary head), with the training loss."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import resize


class EncoderDecoder(nn.Module):
    """A segmentor made of a backbone returning (C1..C4), a decode head and an optional auxiliary head.

    ``forward(images)`` with images (B, 3, H, W):
      - training mode: ``{"out": logits, "aux": aux_logits}`` (``"aux"`` only with an auxiliary head),
        each at its head's feature resolution (stride = the backbone's output stride, 4 for
        DeepLabv3+); :meth:`loss` upsamples them to the labels' size (the mmsegmentation way: the
        big upsampled tensor lives only inside the loss).
      - eval mode: the final logits (B, num_classes, H, W), bilinearly upsampled to the input size.

    ``loss(outputs, targets)`` with targets (B, H, W) int64 (``ignore_index`` = unlabelled) returns
    ``{"out": CE, "aux": aux_weight * CE, "total": sum}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        auxiliary_head: DecodeHead | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.num_classes = decode_head.num_classes

    def forward(self, images: Tensor) -> dict[str, Tensor] | Tensor:
        features = self.backbone(images)
        out = self.decode_head(features)
        if not self.training:
            return resize(out, images.shape[-2:])
        outputs = {"out": out}
        if self.auxiliary_head is not None:
            outputs["aux"] = self.auxiliary_head(features)
        return outputs

    def cross_entropy(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean pixel CE of logits (B, K, h, w) upsampled to targets (B, H, W), ignoring ``ignore_index``."""
        return F.cross_entropy(resize(logits, targets.shape[-2:]), targets, ignore_index=self.ignore_index)

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        losses = {"out": self.cross_entropy(outputs["out"], targets)}
        if "aux" in outputs:
            losses["aux"] = self.aux_weight * self.cross_entropy(outputs["aux"], targets)
        losses["total"] = sum(losses.values())
        return losses
