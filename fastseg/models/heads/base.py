"""The decode-head contract: a context module, a decoder (identity by default), dropout and a 1x1 classifier."""
from __future__ import annotations

import abc
from collections.abc import Sequence

from torch import Tensor, nn


class DecodeHead(nn.Module, abc.ABC):
    """Base of the segmentation heads.

    Two stages, as mmsegmentation's decode heads: subclasses implement :meth:`context` (the context
    module: backbone features -> (B, channels, h, w)) and may override :meth:`decode` (the decoder:
    context feature + backbone features -> (B, channels, h', w'); the identity by default, DeepLabv3+'s
    C1 skip decoder). :meth:`forward_features` chains them; :meth:`forward` adds Dropout2d and the 1x1
    ``classifier`` -> (B, num_classes, h', w'). A paper module that sits between the context module and
    the decoder (CSFRNet's CSFLM + AAM) calls ``decode(module(context(features)), features)``.

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
    def context(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features (C1..C4) -> the head's context feature (B, channels, h, w)."""

    def decode(self, context: Tensor, features: Sequence[Tensor]) -> Tensor:
        """Context feature (B, channels, h, w) and backbone features -> the classifier's input; the identity."""
        return context

    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features (C1..C4) -> the classifier's input (B, channels, h', w'): context, then decode."""
        return self.decode(self.context(features), features)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features (C1..C4) -> logits (B, num_classes, h, w) at the context feature's size."""
        return self.classifier(self.dropout(self.forward_features(features)))
