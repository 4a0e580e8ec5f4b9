"""Segmentation metrics from a confusion matrix: IoU, mIoU, per-class and pixel accuracy.

The (K, K) int64 confusion matrix ``C[t, p]`` (rows: ground truth, columns: prediction) and the (K,)
count ``M[t]`` of ground-truth pixels of class t predicted outside [0, K) live on the device of the
predictions and are updated there without reading anything back to the host, so the metric can run
inside a training loop on GPU. Per class k, with TP = C[k, k] and GT_k = sum_p C[k, p] + M[k]:

    IoU_k = TP / (GT_k + sum_t C[t, k] - TP)      Acc_k = TP / GT_k
    aAcc  = trace(C) / sum_k GT_k                 mIoU, mAcc = means over classes

A prediction outside [0, K) on a valid pixel is a miss (a false negative of the ground-truth class and
no class's false positive): cityscapesScripts' rule, where such a prediction is a label id that is not
an evaluation id (its ``getIouScoreForLabel`` takes the whole confusion row as TP + FN), and
mmsegmentation's (its ``intersect_and_union`` counts the label's area whatever the prediction).

A class absent from both ground truth and prediction has IoU NaN; a class absent from the ground truth
has Acc NaN. NaNs are left out of the means (the mmsegmentation convention).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` in place over the ranks of the default process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class SegmentationMetric:
    """Accumulates a (K, K) confusion matrix over ``update`` calls; ``compute`` gives the metric dict.

    Args:
        num_classes: K.
        ignore_index: target value left out of every count (as are targets outside [0, K)); a
            prediction outside [0, K) on any other pixel is a miss.
        device: where the matrix lives; by default it moves to the device of the first ``update``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.missed = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()
        self.missed.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` int64 (B, H, W) (or any equal shapes) of class ids."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
        if pred.dtype.is_floating_point or target.dtype.is_floating_point:
            raise ValueError(f"pred and target must hold integer class ids, got {pred.dtype} and {target.dtype}")
        if self.confusion.device != pred.device:
            self.confusion, self.missed = self.confusion.to(pred.device), self.missed.to(pred.device)
        k = self.num_classes
        pred, target = pred.reshape(-1).long(), target.to(pred.device).reshape(-1).long()
        valid_target = (target >= 0) & (target < k) & (target != self.ignore_index)
        # Bin t * (K + 1) + p for p in [0, K), bin t * (K + 1) + K for a prediction outside [0, K), and
        # the extra bin K * (K + 1) for ignored pixels, dropped below: a fixed-size scatter, no host sync
        # (boolean indexing and torch.bincount both read a size back to the host).
        pred = torch.where((pred >= 0) & (pred < k), pred, k)
        index = torch.where(valid_target, target * (k + 1) + pred, k * (k + 1))
        counts = torch.zeros(k * (k + 1) + 1, dtype=torch.int64, device=pred.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
        counts = counts[:-1].view(k, k + 1)
        self.confusion += counts[:, :k]
        self.missed += counts[:, k]

    def all_reduce(self) -> None:
        """Sum the confusion matrix and the misses over ranks when ``torch.distributed`` is initialised
        (call once, after the last ``update``); a no-op otherwise."""
        all_reduce_sum(self.confusion)
        all_reduce_sum(self.missed)

    def compute(self) -> dict[str, Any]:
        """``{"mIoU", "aAcc", "mAcc"}`` floats in [0, 1] and ``{"IoU", "Acc"}`` per-class lists (NaN = absent)."""
        confusion = self.confusion.double().cpu()
        tp = confusion.diagonal()
        gt, predicted = confusion.sum(1) + self.missed.double().cpu(), confusion.sum(0)
        union = gt + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), math.nan).tolist()
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), math.nan).tolist()
        total = gt.sum().item()
        return {
            "mIoU": nanmean(iou),
            "aAcc": tp.sum().item() / total if total > 0 else math.nan,
            "mAcc": nanmean(acc),
            "IoU": iou,
            "Acc": acc,
        }
