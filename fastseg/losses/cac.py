"""CSFRNet's class-aware consistency (CAC) loss (Eq. 4) and margin smooth loss (Eq. 5).

Labels are downsampled by nearest neighbour to the embeddings' (h, w). Per image, the center s_k
(Eq. 1) and the margin m_k (Eq. 3) of every class come from ``fastseg.ops.class_avg_pool``, and
``phi = fastseg.ops.gaussian_center_distance`` (Eq. 2, scale exp(m_k * delta), delta = 10) gives
every pixel's distance d in [0, 1) to every center.

CAC: one binary problem per (image, class present in the image): the class's pixels are
positives with target d = 0, every other non-ignored pixel a negative with target d = 1.
With the Lovász hinge (default) the score fed to ``fastseg.ops.lovasz_hinge`` is
``2 * (1 - d) - 1``, as in Neven et al.'s spatial-embedding loss: it is 1 at the center and falls
to -1 far from it, so the hinge errors are ``1 - score = 2 d`` for positives and
``1 + score = 2 (1 - d)`` for negatives, and minimising the loss pulls the class's own pixels to
d = 0 and the others to d = 1. With ``binary_loss="bce"`` (CSFRNet Table 4) the binary loss is
the BCE of d against those targets, averaged over the image's non-ignored pixels (the 1/N of
Eq. 4). The per-class losses are averaged over the classes present in the image (1/K of Eq. 4),
then over the images that have any; absent classes are masked out by weights, so the number of
present classes never leaves the device.

Smooth: per image, ``(1/K) sum_k (1/N_k) sum_{ij of class k} (c_ij - m_k)^2`` over the present
classes (Eq. 5), reduced over the batch as the CAC loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.losses.cross_entropy import at_least_float32
from fastseg.ops import class_avg_pool, downsample_labels, gaussian_center_distance, lovasz_hinge

BINARY_LOSSES = ("lovasz", "bce")


def present_class_mean(losses: Tensor, present: Tensor) -> Tensor:
    """Mean over images of the mean over present classes: losses and present (B,K) -> scalar."""
    present = present.to(losses.dtype)
    classes_per_image = present.sum(1)
    per_image = (losses * present).sum(1) / classes_per_image.clamp(min=1)
    return per_image.sum() / (classes_per_image > 0).sum().clamp(min=1)


def class_aware_consistency_loss(
    embeddings: Tensor,
    margins: Tensor,
    labels: Tensor,
    num_classes: int,
    delta: float = 10.0,
    binary_loss: str = "lovasz",
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """CAC loss (Eq. 4) and smooth loss (Eq. 5) of CSFRNet's embeddings and margins.

    Args:
        embeddings: (B, C', h, w) feature embeddings b_ij.
        margins: (B, 1, h, w) margin map c_ij.
        labels: (B, H, W) class ids in [0, num_classes) or ``ignore_index``, downsampled to (h, w).
        num_classes: K.
        delta: the scale exponent factor of Eq. 2 (10 in the paper).
        binary_loss: "lovasz" (the paper's choice) or "bce" (Table 4 ablation).
        ignore_index: label of pixels that take no part.

    Returns:
        (loss_cac, loss_smooth), two scalars; CSFRNet weights both by 0.2 (Eq. 7).
    """
    if binary_loss not in BINARY_LOSSES:
        raise ValueError(f"binary_loss must be one of {BINARY_LOSSES}, got {binary_loss!r}")
    if margins.dim() != 4 or margins.shape[1] != 1:
        raise ValueError(f"margins must have shape (B, 1, h, w), got {tuple(margins.shape)}")
    labels = downsample_labels(labels, embeddings.shape[-2:]).long()
    centers, counts = class_avg_pool(embeddings, labels, num_classes, ignore_index)  # Eq. 1
    class_margins = class_avg_pool(margins, labels, num_classes, ignore_index)[0].squeeze(2)  # Eq. 3, (B,K)
    phi = gaussian_center_distance(embeddings, centers, class_margins, delta)  # Eq. 2, (B,K,h,w)
    present = counts > 0

    batch, pixels = labels.shape[0], labels.numel() // labels.shape[0]
    valid = (labels != ignore_index).reshape(batch, 1, pixels).expand(batch, num_classes, pixels)
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1)
    own_class = labels.reshape(batch, 1, pixels) == classes  # (B,K,hw): target d = 0
    distance = phi.reshape(batch, num_classes, pixels)
    if binary_loss == "lovasz":
        scores = 2 * (1 - distance) - 1
        rows = lovasz_hinge(
            scores.reshape(-1, pixels), own_class.reshape(-1, pixels), valid.reshape(-1, pixels)
        ).view(batch, num_classes)
    else:
        # Targets d = 0 (own class) and d = 1 (others); fp32 (fp64 for fp64 embeddings). PyTorch's own
        # BCE keeps its gradient finite at d = 0 and 1 (a log-based rewrite gives 0 * inf = NaN there);
        # CUDA autocast refuses binary_cross_entropy in any dtype, hence autocast off around it.
        distance = at_least_float32(distance)
        with torch.autocast(distance.device.type, enabled=False):
            bce = F.binary_cross_entropy(distance, (~own_class).to(distance.dtype), reduction="none")
        rows = (bce * valid).sum(2) / valid.sum(2).clamp(min=1)
    loss_cac = present_class_mean(rows, present)  # Eq. 4

    pixel_margins = class_margins.gather(1, torch.where(labels == ignore_index, 0, labels).reshape(batch, pixels))
    squared = (margins.reshape(batch, pixels) - pixel_margins).square().view_as(margins)
    class_spread = class_avg_pool(squared, labels, num_classes, ignore_index)[0].squeeze(2)  # (B,K)
    loss_smooth = present_class_mean(class_spread, present)  # Eq. 5
    return loss_cac, loss_smooth


class ClassAwareConsistencyLoss(nn.Module):
    """Module form of :func:`class_aware_consistency_loss`.

    forward(embeddings (B,C',h,w), margins (B,1,h,w), labels (B,H,W)) -> (loss_cac, loss_smooth).
    """

    def __init__(self, num_classes: int, delta: float = 10.0, binary_loss: str = "lovasz", ignore_index: int = 255):
        super().__init__()
        if binary_loss not in BINARY_LOSSES:
            raise ValueError(f"binary_loss must be one of {BINARY_LOSSES}, got {binary_loss!r}")
        self.num_classes = num_classes
        self.delta = delta
        self.binary_loss = binary_loss
        self.ignore_index = ignore_index

    def forward(self, embeddings: Tensor, margins: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return class_aware_consistency_loss(
            embeddings, margins, labels, self.num_classes, self.delta, self.binary_loss, self.ignore_index
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, delta={self.delta}, binary_loss={self.binary_loss!r}, "
            f"ignore_index={self.ignore_index}"
        )
