"""Lovász losses (Berman et al. 2018) as modules: the binary hinge per row and the multi-class softmax."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from fastseg.ops import lovasz_hinge, lovasz_softmax

_REDUCTIONS = ("mean", "sum", "none")


class LovaszHingeLoss(nn.Module):
    """Lovász hinge over rows (e.g. one per (image, class) in CSFRNet Eq. 4), reduced over the rows.

    forward(logits (N,P), labels (N,P) 0/1, valid (N,P) bool or None) -> scalar, or (N,) with
    ``reduction="none"``.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        losses = lovasz_hinge(logits, labels, valid)
        if self.reduction == "mean":
            return losses.mean()
        return losses.sum() if self.reduction == "sum" else losses

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax of class probabilities: forward(probs (B,K,H,W), labels (B,H,W)) -> scalar."""

    def __init__(self, classes: str | Sequence[int] = "present", per_image: bool = False, ignore_index: int = 255):
        super().__init__()
        self.classes = classes if isinstance(classes, str) else list(classes)
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, probs: Tensor, labels: Tensor) -> Tensor:
        return lovasz_softmax(probs, labels, self.classes, self.per_image, self.ignore_index)

    def extra_repr(self) -> str:
        return f"classes={self.classes!r}, per_image={self.per_image}, ignore_index={self.ignore_index}"
