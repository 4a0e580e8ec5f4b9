"""DecoupleSegNet's boundary-aware OHEM cross-entropy on the final prediction (Eq. 5, L_ce of Eq. 4).

``L_ce = -(1/|S|) sum_{i in S} log s_{i, y_i}``. Per image, the candidates are the non-ignored
pixels whose predicted edge probability ``sigmoid(b_i)`` exceeds ``edge_thresh`` (t_b = 0.8), and S
holds the ``K = floor(keep_ratio * H * W)`` candidates with the highest cross-entropy (keep_ratio =
0.10, N = H * W the image's pixel count; the top-K choice plays the role of the threshold t_K), or
every candidate when there are fewer. The mean runs over the selected pixels of the whole batch
(w_i = 1); a batch without any gives 0. The edge prediction only selects pixels: no gradient
flows into it from this loss.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastseg.losses.cross_entropy import at_least_float32, pixel_cross_entropy, resize_to_labels, weighted_mean


@torch.no_grad()
def boundary_hard_mask(
    losses: Tensor, edge_logits: Tensor, valid: Tensor, edge_thresh: float = 0.8, keep_ratio: float = 0.1
) -> Tensor:
    """(B,H,W) bool: per image, the ``floor(keep_ratio * H * W)`` largest ``losses`` among the valid
    pixels with ``sigmoid(edge_logits) > edge_thresh``; ``edge_logits`` (B,1,H,W) at the losses' size."""
    batch = losses.shape[0]
    candidates = valid & (torch.sigmoid(at_least_float32(edge_logits.squeeze(1))) > edge_thresh)
    scores = torch.where(candidates, losses, float("-inf")).reshape(batch, -1)
    kept = int(keep_ratio * scores.shape[1])
    if kept == 0:
        return torch.zeros_like(candidates)
    order = scores.topk(kept, dim=1).indices
    selected = torch.zeros_like(scores, dtype=torch.bool).scatter(1, order, True)
    return selected.view_as(candidates) & candidates


def boundary_ohem_cross_entropy(
    logits: Tensor,
    edge_logits: Tensor,
    labels: Tensor,
    edge_thresh: float = 0.8,
    keep_ratio: float = 0.1,
    ignore_index: int = 255,
) -> Tensor:
    """Boundary-aware OHEM cross-entropy (see the module docstring).

    Args:
        logits: (B, K, h, w) final segmentation logits; edge_logits: (B, 1, h', w') raw boundary
            scores; both upsampled to the labels' size when they differ.
        labels: (B, H, W) class ids in [0, K) or ``ignore_index``.
        edge_thresh: t_b, the edge probability a candidate pixel must exceed.
        keep_ratio: K / N, the fraction of an image's pixels kept at most.

    Returns:
        A scalar loss.
    """
    losses = pixel_cross_entropy(logits, labels, ignore_index)
    edge_logits = resize_to_labels(edge_logits, labels)
    keep = boundary_hard_mask(losses.detach(), edge_logits, labels != ignore_index, edge_thresh, keep_ratio)
    return weighted_mean(losses, keep)


class BoundaryOhemCrossEntropyLoss(nn.Module):
    """Module form of :func:`boundary_ohem_cross_entropy` times ``loss_weight`` (lambda_5 = 1).

    forward(logits (B,K,h,w), edge_logits (B,1,h',w'), labels (B,H,W)) -> scalar.
    """

    def __init__(
        self, edge_thresh: float = 0.8, keep_ratio: float = 0.1, ignore_index: int = 255, loss_weight: float = 1.0
    ):
        super().__init__()
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        self.edge_thresh = edge_thresh
        self.keep_ratio = keep_ratio
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, edge_logits: Tensor, labels: Tensor) -> Tensor:
        loss = boundary_ohem_cross_entropy(
            logits, edge_logits, labels, self.edge_thresh, self.keep_ratio, self.ignore_index
        )
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (
            f"edge_thresh={self.edge_thresh}, keep_ratio={self.keep_ratio}, "
            f"ignore_index={self.ignore_index}, loss_weight={self.loss_weight}"
        )
