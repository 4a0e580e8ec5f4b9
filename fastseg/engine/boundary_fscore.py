"""Boundary F-score: how well predicted class boundaries match the ground truth's, within a distance.

DecoupleSegNet (Sec. 4.2, Fig. 3) reports the mean over classes of the boundary F-score of [47]
(Perazzi et al.'s DAVIS measure, as GSCNN used it on Cityscapes) at four distance thresholds, "3, 5,
9 and 12 pixels". The official evaluation gives them as fractions of the image diagonal, 0.0005,
0.001875, 0.00375 and 0.005, turned into pixels by DAVIS' ``f_boundary`` rule
``ceil(fraction * sqrt(H^2 + W^2))`` per image: 2, 5, 9 and 12 px at 1024x2048. A threshold >= 1 is a
pixel count as it is (also DAVIS' rule). For each class k and threshold t (in pixels):

- the boundary of class k in a label map is its pixels with an 8-neighbour of another valid class;
  pixels next to ignored pixels or the image border do not count, and the prediction is ignored
  wherever the ground truth is;
- precision P = (predicted boundary pixels within distance t of a ground-truth boundary pixel)
  / (predicted boundary pixels); recall R = (ground-truth boundary pixels within t of a predicted one)
  / (ground-truth boundary pixels); F = 2PR / (P + R).

"Within distance t" is Euclidean, dx^2 + dy^2 <= t^2: a disk, the slack of the DAVIS measure (a
square would accept diagonal matches up to sqrt(2) t away). Rather than dilating by a disk with
max-pools (O(t^2) work per pixel, per threshold: minutes per Cityscapes image on a CPU), a distance
transform truncated at the largest threshold T serves every threshold at once: the distance to the
nearest boundary pixel along each row by cumulative max/min scans of column indices, then
d^2(y, x) = min over |y' - y| <= T of (y' - y)^2 + row_distance(y', x)^2. It is exact up to T and
runs as a few dozen elementwise passes on the device.

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

# Fractions of the image diagonal (the official DecoupleSegNet / GSCNN evaluation).
DECOUPLE_THRESHOLDS = (0.0005, 0.001875, 0.00375, 0.005)
# Class maps handled per pass (classes x batch x pixels), bounding the distance transform's memory.
CHUNK_ELEMENTS = 1 << 22


def valid_labels(labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """labels with ``ignore_index`` and values outside [0, K) replaced by -1."""
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    return torch.where(valid, labels.long(), -1)


def edge_pixels(labels: Tensor) -> Tensor:
    """(B, H, W) bool: valid pixels of ``labels`` (-1 = none) with an 8-neighbour of another valid label."""
    height, width = labels.shape[-2:]
    padded = F.pad(labels, (1, 1, 1, 1), value=-1)
    edge = torch.zeros_like(labels, dtype=torch.bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == dx == 1:
                continue
            neighbour = padded[:, dy : dy + height, dx : dx + width]
            edge |= (neighbour >= 0) & (neighbour != labels)
    return edge & (labels >= 0)


def select_classes(labels: Tensor, edges: Tensor, classes: Tensor) -> Tensor:
    """(B, len(classes), H, W) bool: the edge pixels of each class id in ``classes`` (int64 (k,))."""
    return edges[:, None] & (labels[:, None] == classes.view(1, -1, 1, 1))


def class_boundaries(labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Boundary maps (B, K, H, W) bool of labels (B, H, W): pixels of class k with an 8-neighbour of a
    valid class other than k (ignored pixels and values outside [0, K) belong to no class)."""
    labels = valid_labels(labels, num_classes, ignore_index)
    return select_classes(labels, edge_pixels(labels), torch.arange(num_classes, device=labels.device))


def row_distance(mask: Tensor, cap: int) -> Tensor:
    """int32 (..., W): distance along the last axis to the nearest True of ``mask``, capped at ``cap``."""
    width = mask.shape[-1]
    columns = torch.arange(width, dtype=torch.int32, device=mask.device)
    previous = torch.where(mask, columns, -cap - 1).cummax(-1).values  # last True at or before x
    following = torch.where(mask, columns, width + cap).flip(-1).cummin(-1).values.flip(-1)  # first at or after x
    return torch.minimum(columns - previous, following - columns).clamp_(max=cap)


def squared_distance(mask: Tensor, limit: int) -> Tensor:
    """int32 (..., H, W): squared Euclidean distance to the nearest True of ``mask`` (..., H, W); exact
    where it is <= limit^2, and > limit^2 everywhere else."""
    row = row_distance(mask, limit + 1)
    row_squared = row * row
    distance = row_squared.clone()
    for dy in range(1, min(limit, mask.shape[-2] - 1) + 1):
        distance[..., dy:, :] = torch.minimum(distance[..., dy:, :], row_squared[..., :-dy, :] + dy * dy)
        distance[..., :-dy, :] = torch.minimum(distance[..., :-dy, :], row_squared[..., dy:, :] + dy * dy)
    return distance


def threshold_pixels(threshold: float, height: int, width: int) -> int:
    """DAVIS ``f_boundary``'s tolerance in pixels: ``threshold`` itself when >= 1 (or 0), else the
    fraction of the diagonal rounded up, ceil(threshold * sqrt(H^2 + W^2))."""
    if threshold >= 1 or threshold == 0:
        return int(threshold)
    return math.ceil(threshold * math.sqrt(height * height + width * width))


def threshold_name(threshold: float) -> str:
    """Result key: "3px" for a pixel count, "0.005diag" for a fraction of the image diagonal."""
    return f"{int(threshold)}px" if threshold >= 1 or threshold == 0 else f"{threshold:g}diag"


class BoundaryFScore:
    """Accumulates boundary-match counts per threshold and class; the interface of
    :class:`~fastseg.engine.metrics.SegmentationMetric` (``update``, ``reset``, ``all_reduce``, ``compute``).

    Args:
        num_classes: K.
        thresholds: distance tolerances: fractions of the image diagonal (in (0, 1); by default the
            official DecoupleSegNet evaluation's 0.0005, 0.001875, 0.00375, 0.005) or whole pixel counts.
        ignore_index: target value of unlabelled pixels.
        device: where the counts live; by default they move to the device of the first ``update``.
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Sequence[float] = DECOUPLE_THRESHOLDS,
        ignore_index: int = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if not thresholds or any(t < 0 or (t >= 1 and int(t) != t) for t in thresholds):
            raise ValueError(f"thresholds must be fractions of the diagonal in (0, 1) or whole pixel counts, got {thresholds}")
        self.num_classes = num_classes
        self.thresholds = tuple(thresholds)
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
        pred = valid_labels(pred, self.num_classes, self.ignore_index)
        target = valid_labels(target, self.num_classes, self.ignore_index)
        pred_edges, gt_edges = edge_pixels(pred), edge_pixels(target)
        pred_totals, gt_totals = self.boundary_totals(pred, pred_edges), self.boundary_totals(target, gt_edges)
        self.counts[:, 0] += pred_totals
        self.counts[:, 2] += gt_totals
        # Only classes with a boundary somewhere need the distance transforms (an image of ADE20K shows
        # about 10 of its 150 classes): one host sync per batch buys that.
        present = ((pred_totals + gt_totals) > 0).nonzero().flatten()
        pixels = [threshold_pixels(t, *pred.shape[-2:]) for t in self.thresholds]
        limit = max(pixels)
        squared = torch.tensor([t * t for t in pixels], device=pred.device).view(-1, 1, 1, 1, 1)
        pixel_dims = (1, 3, 4)
        chunk = max(1, CHUNK_ELEMENTS // max(pred.numel(), 1))
        for classes in present.split(chunk):
            pred_boundary = select_classes(pred, pred_edges, classes)
            gt_boundary = select_classes(target, gt_edges, classes)
            # (T, B, k, H, W): within threshold t of the other map's boundary of the same class.
            near_gt = squared_distance(gt_boundary, limit) <= squared
            near_pred = squared_distance(pred_boundary, limit) <= squared
            self.counts[:, 1, classes] += (pred_boundary & near_gt).sum(pixel_dims)
            self.counts[:, 3, classes] += (gt_boundary & near_pred).sum(pixel_dims)

    def boundary_totals(self, labels: Tensor, edges: Tensor) -> Tensor:
        """int64 (K,): boundary pixels of each class (``labels`` with -1 = no class)."""
        index = torch.where(edges, labels, self.num_classes).flatten()
        totals = torch.zeros(self.num_classes + 1, dtype=torch.int64, device=labels.device)
        return totals.scatter_add_(0, index, torch.ones_like(index))[:-1]

    def all_reduce(self) -> None:
        """Sum the counts over ranks when ``torch.distributed`` is initialised (call once); else a no-op."""
        all_reduce_sum(self.counts)

    def compute(self) -> dict[str, Any]:
        """``{"BF": {name: mean F}, "BF_per_class": {name: [F_k]}}`` per threshold (names "0.0005diag" or
        "3px", :func:`threshold_name`), F in [0, 1], NaN = no boundary."""
        counts = self.counts.double().cpu()
        pred_total, pred_matched, gt_total, gt_matched = counts.unbind(1)
        precision = pred_matched / pred_total.clamp(min=1)
        recall = gt_matched / gt_total.clamp(min=1)
        fscore = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
        fscore = torch.where((pred_total > 0) | (gt_total > 0), fscore, math.nan)
        per_class = {threshold_name(t): row.tolist() for t, row in zip(self.thresholds, fscore)}
        return {"BF": {key: nanmean(row) for key, row in per_class.items()}, "BF_per_class": per_class}
