"""Boundary F-score: how well predicted class boundaries match the ground truth's, within a distance.

DecoupleSegNet (Sec. 4.2, Fig. 3) reports the mean over classes of the boundary F-score of [47]
(Perazzi et al.'s DAVIS measure, as GSCNN used it on Cityscapes) at four distance thresholds, 3, 5,
9 and 12 pixels. For each class k and threshold t:

- the boundary of class k in a label map is its pixels with an 8-neighbour of another valid class
  (a 3x3 max-pool of the "other class" mask); pixels next to ignored pixels or the image border do not
  count, and the prediction is ignored wherever the ground truth is;
- precision P = (predicted boundary pixels within distance t of a ground-truth boundary pixel)
  / (predicted boundary pixels); recall R = (ground-truth boundary pixels within t of a predicted one)
  / (ground-truth boundary pixels); F = 2PR / (P + R).

"Within distance t" is a dilation by the Euclidean disk {dx^2 + dy^2 <= t^2}, the slack of the DAVIS
measure (a square would accept diagonal matches up to sqrt(2) t away). The disk is the union of the
rectangles of its staircase outline, so the dilation is a max over a few ``max_pool2d`` calls (about
t of them), exact and all on device.

The four counts are summed over the whole dataset (no per-image lists), so P and R are dataset-level
ratios per class; a class with boundary pixels in neither prediction nor ground truth has F NaN,
left out of the mean.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastseg.engine.metrics import all_reduce_sum, nanmean

DECOUPLE_THRESHOLDS = (3, 5, 9, 12)


def class_boundaries(labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Boundary maps (B, K, H, W) bool of labels (B, H, W): pixels of class k with an 8-neighbour of a
    valid class other than k (ignored pixels and values outside [0, K) belong to no class)."""
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    member = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2).bool()
    member &= valid[:, None]
    other = valid[:, None] & ~member
    # max_pool2d pads with -inf: nothing outside the image counts as another class.
    touches_other = F.max_pool2d(other.float(), 3, stride=1, padding=1) > 0
    return member & touches_other


def disk_rectangles(radius: int) -> list[tuple[int, int]]:
    """Half-sizes (dy, dx) of the rectangles whose union is the disk dx^2 + dy^2 <= radius^2: one per
    step of its outline, dx = floor(sqrt(r^2 - dy^2))."""
    half_widths = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    return [(dy, dx) for dy, dx in enumerate(half_widths) if dy == radius or half_widths[dy + 1] < dx]


def dilate_disk(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of ``mask`` (N, C, H, W) bool by the Euclidean disk of ``radius`` pixels."""
    if radius == 0:
        return mask
    values = mask.float()
    dilated = None
    for dy, dx in disk_rectangles(radius):
        part = F.max_pool2d(values, (2 * dy + 1, 2 * dx + 1), stride=1, padding=(dy, dx))
        dilated = part if dilated is None else torch.maximum(dilated, part)
    return dilated > 0


class BoundaryFScore:
    """Accumulates boundary-match counts per threshold and class; the interface of
    :class:`~fastseg.engine.metrics.SegmentationMetric` (``update``, ``reset``, ``all_reduce``, ``compute``).

    Args:
        num_classes: K.
        thresholds: distance tolerances in pixels (DecoupleSegNet's 3, 5, 9, 12 by default).
        ignore_index: target value of unlabelled pixels.
        device: where the counts live; by default they move to the device of the first ``update``.
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Sequence[int] = DECOUPLE_THRESHOLDS,
        ignore_index: int = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if not thresholds or any(int(t) != t or t < 0 for t in thresholds):
            raise ValueError(f"thresholds must be non-negative whole pixel counts, got {thresholds}")
        self.num_classes = num_classes
        self.thresholds = tuple(int(t) for t in thresholds)
        self.ignore_index = ignore_index
        # counts[i, :, k] for threshold i, class k: predicted boundary pixels, those matched, ground-truth
        # boundary pixels, those matched.
        self.counts = torch.zeros(len(self.thresholds), 4, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.counts.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` int64 (B, H, W) of class ids."""
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, H, W)")
        if self.counts.device != pred.device:
            self.counts = self.counts.to(pred.device)
        target = target.to(pred.device)
        pred = torch.where(target == self.ignore_index, self.ignore_index, pred)
        pred_boundary = class_boundaries(pred, self.num_classes, self.ignore_index)
        gt_boundary = class_boundaries(target, self.num_classes, self.ignore_index)
        pixel_dims = (0, 2, 3)
        self.counts[:, 0] += pred_boundary.sum(pixel_dims)
        self.counts[:, 2] += gt_boundary.sum(pixel_dims)
        for i, radius in enumerate(self.thresholds):
            self.counts[i, 1] += (pred_boundary & dilate_disk(gt_boundary, radius)).sum(pixel_dims)
            self.counts[i, 3] += (gt_boundary & dilate_disk(pred_boundary, radius)).sum(pixel_dims)

    def all_reduce(self) -> None:
        """Sum the counts over ranks when ``torch.distributed`` is initialised (call once); else a no-op."""
        all_reduce_sum(self.counts)

    def compute(self) -> dict[str, Any]:
        """``{"BF": {"3px": mean F, ...}, "BF_per_class": {"3px": [F_k], ...}}``, F in [0, 1], NaN = no boundary."""
        counts = self.counts.double().cpu()
        pred_total, pred_matched, gt_total, gt_matched = counts.unbind(1)
        precision = pred_matched / pred_total.clamp(min=1)
        recall = gt_matched / gt_total.clamp(min=1)
        fscore = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
        fscore = torch.where((pred_total > 0) | (gt_total > 0), fscore, math.nan)
        per_class = {f"{t}px": row.tolist() for t, row in zip(self.thresholds, fscore)}
        return {"BF": {key: nanmean(row) for key, row in per_class.items()}, "BF_per_class": per_class}
