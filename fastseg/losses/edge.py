"""Boundary ground truth from labels and DecoupleSegNet's class-balanced edge BCE (Eq. 4, L_bce).

Edge ground truth: a non-ignored pixel is an edge pixel when a non-ignored pixel within Euclidean
distance ``radius`` (offsets with dy^2 + dx^2 <= radius^2, clipped at the image border) has another
label. Ignored pixels are neither edge nor background: they take no part in the BCE, and a border
between a class and ignored pixels is no edge.

Edge BCE: with P positive (edge) and N negative pixels among the batch's non-ignored ones,
positives are weighted ``N / (P + N)`` and negatives ``P / (P + N)`` (the rarer side weighs more),
and the loss is the mean of the weighted ``binary_cross_entropy_with_logits`` over the non-ignored
pixels. The logits go to the with-logits BCE as they are: no sigmoid before it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.losses.cross_entropy import at_least_float32, resize_to_labels, weighted_mean


def disk_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) != (0, 0) with dy^2 + dx^2 <= radius^2."""
    span = range(-radius, radius + 1)
    return [(dy, dx) for dy in span for dx in span if 0 < dy * dy + dx * dx <= radius * radius]


def edge_target(labels: Tensor, radius: int = 2, ignore_index: int = 255) -> Tensor:
    """(B,H,W) bool boundary map of (B,H,W) labels (see the module docstring).

    One shifted comparison per offset of the disk (12 for radius 2), each over the whole map.
    """
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    height, width = labels.shape[-2:]
    padded = F.pad(labels, (radius, radius, radius, radius), value=ignore_index)
    valid = labels != ignore_index
    edges = torch.zeros_like(valid)
    for dy, dx in disk_offsets(radius):
        neighbour = padded[:, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        edges |= (neighbour != labels) & (neighbour != ignore_index)
    return edges & valid


def edge_bce_loss(edge_logits: Tensor, edges: Tensor, valid: Tensor) -> Tensor:
    """Class-balanced BCE with logits (DecoupleSegNet Eq. 4, L_bce), without the lambda_4 weight.

    Args:
        edge_logits: (B, 1, h, w) raw boundary scores, upsampled to (H, W) when they differ.
        edges: (B, H, W) bool boundary ground truth (e.g. :func:`edge_target`).
        valid: (B, H, W) bool, the pixels that take part.

    Returns:
        A scalar loss.
    """
    logits = at_least_float32(resize_to_labels(edge_logits, edges).squeeze(1))
    target = edges.to(logits.dtype)
    positives = (edges & valid).sum().to(logits.dtype)
    total = valid.sum().to(logits.dtype).clamp(min=1)
    weights = torch.where(edges, (total - positives) / total, positives / total) * valid
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return weighted_mean(losses * weights, valid)


class EdgeBCELoss(nn.Module):
    """Edge BCE against the boundary of the labels, times ``loss_weight`` (lambda_4 = 25 in the paper).

    forward(edge_logits (B,1,h,w), labels (B,H,W)) -> scalar.
    """

    def __init__(self, radius: int = 2, ignore_index: int = 255, loss_weight: float = 25.0):
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        self.radius = radius
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight

    def forward(self, edge_logits: Tensor, labels: Tensor) -> Tensor:
        edges = edge_target(labels, self.radius, self.ignore_index)
        return self.loss_weight * edge_bce_loss(edge_logits, edges, labels != self.ignore_index)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, ignore_index={self.ignore_index}, loss_weight={self.loss_weight}"
