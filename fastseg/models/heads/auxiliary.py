"""Auxiliary FCN head on C3 (PSPNet's deep supervision; weight 0.4 in the baselines' loss)."""
from __future__ import annotations

from fastseg.models.heads.fcn import FCNHead


class AuxiliaryHead(FCNHead):
    """One 3x3 ConvBNReLU on C3 (``features[2]``), dropout 0.1, 1x1 classifier.

    Shapes: C3 (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__(in_channels, channels, num_classes, num_convs=1, concat_input=False, in_index=2,
                         dropout=dropout)
