"""Pixel-wise cross-entropy: plain, class-balanced (ACFNet's option) and online bootstrapping (OHEM).

Every loss here takes logits (B,K,h,w) and labels (B,H,W); logits of another size are upsampled to
the labels' size first (bilinear, ``align_corners=False``). Pixels labelled ``ignore_index`` take
no part. A batch without a kept pixel gives a loss of 0 (not NaN) with a zero gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_to_labels(logits: Tensor, labels: Tensor) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of (B,K,h,w) logits to the (H,W) of (B,H,W) labels."""
    if logits.shape[-2:] == labels.shape[-2:]:
        return logits
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)


def at_least_float32(tensor: Tensor) -> Tensor:
    """fp16/bf16 raised to fp32 for log-probabilities; fp32 and fp64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def pixel_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """-log softmax(logits)[label] per pixel, (B,H,W); 0 at ignored pixels. Logits are resized first."""
    return F.cross_entropy(resize_to_labels(logits, labels), labels.long(), ignore_index=ignore_index, reduction="none")


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(values * weights) / sum(weights); 0 when every weight is 0 (weights sum to 0 or to >= 1)."""
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


def class_balanced_weights(
    labels: Tensor, num_classes: int, ignore_index: int = 255, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Per-batch inverse-frequency class weights (K,) in ``dtype``: ``w_k = 1 / n_k``, 0 for a class with no pixel.

    ``n_k`` counts the batch's pixels labelled k. With these weights the weighted mean of the pixel
    losses, ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, is the mean over the present classes of each
    class's mean loss: every class present in the batch counts equally, whatever its area.
    Counts come from a scatter-add into K + 1 bins (the last one for ignored pixels): no host sync.
    """
    labels = labels.long()
    bins = torch.where(labels == ignore_index, num_classes, labels).flatten()
    counts = torch.zeros(num_classes + 1, device=labels.device, dtype=torch.int64)
    counts = counts.scatter_add(0, bins, torch.ones_like(bins))[:num_classes].to(dtype)
    return torch.where(counts > 0, 1 / counts.clamp(min=1), 0)


def cross_entropy(
    logits: Tensor, labels: Tensor, ignore_index: int = 255, class_balanced: bool = False
) -> Tensor:
    """Mean cross-entropy over the non-ignored pixels, or its class-balanced form.

    Args:
        logits: (B, K, h, w), upsampled to the labels' size when (h, w) != (H, W).
        labels: (B, H, W) integer class ids in [0, K) or ``ignore_index``.
        ignore_index: label of pixels that take no part.
        class_balanced: weight pixel i by ``1 / n_{y_i}`` (:func:`class_balanced_weights`).

    Returns:
        A scalar loss.
    """
    losses = pixel_cross_entropy(logits, labels, ignore_index)
    valid = labels != ignore_index
    if not class_balanced:
        return weighted_mean(losses, valid)
    class_weights = class_balanced_weights(labels, logits.shape[1], ignore_index, losses.dtype)
    pixel_weights = class_weights[torch.where(valid, labels.long(), 0)] * valid
    return weighted_mean(losses, pixel_weights)


@torch.no_grad()
def ohem_mask(
    logits: Tensor, labels: Tensor, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255
) -> Tensor:
    """The pixels online bootstrapping trains on, (B,H,W) bool; logits must already match the labels' size.

    A non-ignored pixel is kept when the softmax probability of its true class is below ``thresh``,
    or when it is among the ``min_kept`` pixels of the batch with the lowest such probability (all
    of them when the batch has fewer). Ties with the ``min_kept``-th lowest probability are kept too.
    mmsegmentation's OHEM sampler keeps ``p < max(p_(min_kept+1), thresh)`` (sorted ascending from
    p_(1)), that is the same pixels up to that off-by-one.

    The ``min_kept``-th lowest probability comes from a fixed-size ``topk`` (ignored pixels get +inf)
    indexed by a tensor, so no value is read back to the host.
    """
    valid = labels != ignore_index
    target = torch.where(valid, labels.long(), 0).unsqueeze(1)
    probs = torch.softmax(at_least_float32(logits), dim=1).gather(1, target).squeeze(1)
    probs = torch.where(valid, probs, float("inf"))
    hard = probs < thresh
    kept = min(min_kept, probs.numel())
    if kept > 0:
        lowest = probs.flatten().topk(kept, largest=False, sorted=True).values
        last = (valid.sum().clamp(max=kept) - 1).clamp(min=0)
        hard = hard | (probs <= lowest.gather(0, last.view(1)))
    return valid & hard


def ohem_cross_entropy(
    logits: Tensor, labels: Tensor, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255
) -> Tensor:
    """Online bootstrapped cross-entropy (ACFNet's "OB", FENet's auxiliary OHEM): mean over the
    pixels of :func:`ohem_mask` (probability of the true class < ``thresh``, at least ``min_kept``).

    Shapes as :func:`cross_entropy`; returns a scalar.
    """
    logits = resize_to_labels(logits, labels)
    keep = ohem_mask(logits, labels, thresh, min_kept, ignore_index)
    return weighted_mean(pixel_cross_entropy(logits, labels, ignore_index), keep)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`: forward(logits (B,K,h,w), labels (B,H,W)) -> scalar."""

    def __init__(self, ignore_index: int = 255, class_balanced: bool = False):
        super().__init__()
        self.ignore_index = ignore_index
        self.class_balanced = class_balanced

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy(logits, labels, self.ignore_index, self.class_balanced)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, class_balanced={self.class_balanced}"


class OhemCrossEntropyLoss(nn.Module):
    """Module form of :func:`ohem_cross_entropy`: forward(logits (B,K,h,w), labels (B,H,W)) -> scalar."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255):
        super().__init__()
        if not 0 <= thresh <= 1:
            raise ValueError(f"thresh must be a probability in [0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return ohem_cross_entropy(logits, labels, self.thresh, self.min_kept, self.ignore_index)

    def extra_repr(self) -> str:
        return f"thresh={self.thresh}, min_kept={self.min_kept}, ignore_index={self.ignore_index}"
