"""The decode-head contract: a context module, then dropout and a 1x1 classifier."""
from __future__ import annotations

import abc
from collections.abc import Sequence

from torch import Tensor, nn


class DecodeHead(nn.Module, abc.ABC):
    """Base of the segmentation heads.

    Subclasses implement :meth:`forward_features` (the context module: backbone features ->
    (B, channels, h, w)); :meth:`forward` adds Dropout2d and the 1x1 ``classifier`` ->
    (B, num_classes, h, w). Paper modules that sit after the context module (CSFRNet's CSFLM, for
    instance) call :meth:`forward_features` themselves.

    Args:
        channels: channels of the context feature.
        num_classes: output classes.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @abc.abstractmethod
    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features (C1..C4) -> the head's context feature (B, channels, h, w)."""

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features (C1..C4) -> logits (B, num_classes, h, w) at the context feature's size."""
        return self.classifier(self.dropout(self.forward_features(features)))
