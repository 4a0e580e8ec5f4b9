"""Relaxed boundary loss: DecoupleSegNet's body loss (Eq. 3, L_body), the label relaxation of
Zhu et al. 2019, "Improving semantic segmentation via video propagation and label relaxation".

A pixel may take any label found in its ``kernel_size`` x ``kernel_size`` neighbourhood:
``loss_i = -log(sum_{c in N(i)} p_ic)``, with ``p = softmax(logits)`` and ``N(i)`` the set of
non-ignored labels in the window centred on pixel i. Away from borders ``N(i) = {y_i}`` and the
loss is the plain cross-entropy; at a border the sum holds more probabilities, so the loss is
never larger than the cross-entropy there. Ignored pixels take no part (and add no label to
their neighbours' sets); the loss is the mean over the non-ignored pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.losses.cross_entropy import at_least_float32, resize_to_labels, weighted_mean


def neighbourhood_labels(labels: Tensor, num_classes: int, kernel_size: int = 3, ignore_index: int = 255) -> Tensor:
    """(B,K,H,W) bool: class k occurs (not ignored) in the ``kernel_size`` window around the pixel.

    A one-hot of the labels (ignored pixels all zero) max-pooled with stride 1; the window is
    clipped at the image border.
    """
    labels = labels.long()
    bins = torch.where(labels == ignore_index, num_classes, labels)
    onehot = F.one_hot(bins, num_classes + 1)[..., :num_classes].permute(0, 3, 1, 2).float()
    pooled = F.max_pool2d(onehot, kernel_size, stride=1, padding=kernel_size // 2)
    return pooled > 0


def relaxed_boundary_loss(
    logits: Tensor, labels: Tensor, kernel_size: int = 3, ignore_index: int = 255, reduction: str = "mean"
) -> Tensor:
    """Label-relaxation loss, averaged over the non-ignored pixels or per pixel.

    Args:
        logits: (B, K, h, w), upsampled to the labels' size when they differ.
        labels: (B, H, W) class ids in [0, K) or ``ignore_index``.
        kernel_size: odd side of the neighbourhood window (3 relaxes each border by one pixel).
        ignore_index: label of pixels that take no part.
        reduction: "mean", or "none" for the (B, H, W) pixel losses (0 at ignored pixels).

    Returns:
        A scalar loss, or (B, H, W) losses.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    logits = resize_to_labels(logits, labels)
    valid = labels != ignore_index
    allowed = neighbourhood_labels(labels, logits.shape[1], kernel_size, ignore_index)
    # Ignored pixels allow every class (a loss of -log 1 = 0), so no empty sum reaches the gradient.
    allowed = allowed | ~valid.unsqueeze(1)
    log_probs = torch.log_softmax(at_least_float32(logits), dim=1)
    losses = -torch.logsumexp(log_probs.masked_fill(~allowed, float("-inf")), dim=1)
    if reduction == "none":
        return losses
    return weighted_mean(losses, valid)


class RelaxedBoundaryLoss(nn.Module):
    """Module form of :func:`relaxed_boundary_loss`: forward(logits (B,K,h,w), labels (B,H,W)) -> scalar."""

    def __init__(self, kernel_size: int = 3, ignore_index: int = 255):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size = kernel_size
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return relaxed_boundary_loss(logits, labels, self.kernel_size, self.ignore_index)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, ignore_index={self.ignore_index}"
