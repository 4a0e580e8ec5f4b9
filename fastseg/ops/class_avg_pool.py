"""Hard class-wise average pooling (CSFRNet Eq. 1 and Eq. 3).

``centers[b, k] = mean of features[b, :, i, j] over the pixels (i, j) with labels[b, i, j] == k``,
zeros for a class with no pixel. CSFRNet uses it for the semantic centers of the embeddings (Eq. 1)
and, with C = 1, for the class-aware margins (Eq. 3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.ops.checks import check_float, check_int, check_integer, check_labels, check_same_device, check_size
from fastseg.ops.library import FusedOp, OpPair


def class_avg_pool_reference(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Plain-PyTorch class_avg_pool: a scatter-add of each pixel into its class's sum.

    Shapes: features (B,C,H,W), labels (B,H,W) -> centers (B,K,C), counts (B,K) int64.
    Labels outside [0, K), and ignore_index even inside it, belong to no class. A pixel adds to its own class
    only (a one-hot product would spread a NaN feature to every class as NaN * 0).
    """
    batch, channels = features.shape[:2]
    labels = labels.reshape(batch, -1)
    in_class = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    slots = torch.where(in_class, labels, num_classes)  # K: no class
    counts = torch.zeros(batch, num_classes + 1, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, slots, torch.ones_like(slots))
    values = features.reshape(batch, channels, -1).transpose(1, 2)  # (B,HW,C)
    sums = values.new_zeros(batch, num_classes + 1, channels).scatter_add(
        1, slots.unsqueeze(-1).expand(-1, -1, channels), values)
    centers = sums[:, :num_classes] / counts[:, :num_classes].clamp(min=1).unsqueeze(-1).to(sums.dtype)
    return centers, counts[:, :num_classes]


def _forward_triton(features: Tensor, labels: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    from fastseg.kernels import class_avg_pool as kernels

    return kernels.forward(features, labels, num_classes)


def _backward_triton(grad_centers: Tensor, labels: Tensor, counts: Tensor, ignore_index: int) -> Tensor:
    from fastseg.kernels import class_avg_pool as kernels

    return kernels.backward(grad_centers, labels, counts)


def _fake_forward(features, labels, num_classes, ignore_index):
    batch, channels = features.shape[0], features.shape[1]
    centers = features.new_empty(batch, num_classes, channels)
    return centers, features.new_empty(batch, num_classes, dtype=torch.int64)


def _fake_backward(grad_centers, labels, counts, ignore_index):
    batch, _, channels = grad_centers.shape
    return grad_centers.new_empty(batch, channels, labels.shape[1], labels.shape[2])


def _setup_context(ctx, inputs, output):
    _, labels, _, ignore_index = inputs
    ctx.save_for_backward(labels, output[1])
    ctx.ignore_index = ignore_index


def _autograd_backward(pair: OpPair):
    def backward(ctx, grad_centers, grad_counts):
        labels, counts = ctx.saved_tensors
        grad_features = pair.backward(grad_centers.contiguous(), labels, counts, ctx.ignore_index)
        return grad_features, None, None, None

    return backward


CLASS_AVG_POOL = FusedOp("class_avg_pool", class_avg_pool_reference, _forward_triton, _backward_triton,
                         _fake_forward, _fake_backward, _setup_context, _autograd_backward)


def class_avg_pool(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255, *, backend: str | None = None
) -> tuple[Tensor, Tensor]:
    """Mean feature of each class's pixels (CSFRNet Eq. 1; Eq. 3 with C = 1).

    Args:
        features: (B, C, H, W) floating point.
        labels: (B, H, W) integer class ids in [0, num_classes) or ``ignore_index``.
        num_classes: K.
        ignore_index: label of pixels that belong to no class, also when it lies in [0, num_classes).
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        centers (B, K, C) in the dtype of ``features`` (zeros for an absent class) and
        counts (B, K) int64, the number of pixels of each class. Differentiable w.r.t. features.
    """
    check_float(features, "features", 4)
    check_integer(labels, "labels", 3)
    check_same_device(features=features, labels=labels)
    check_size(labels.shape[0], features.shape[0], "labels batch size")
    if labels.shape[1:] != features.shape[2:]:
        raise ValueError(
            f"labels spatial size {tuple(labels.shape[1:])} differs from features {tuple(features.shape[2:])}; "
            "use downsample_labels first"
        )
    if features.shape[1] == 0:
        raise ValueError("features must have at least one channel")
    check_labels(labels, num_classes, ignore_index)
    labels = labels.long()
    if 0 <= ignore_index < num_classes:  # every backend treats labels outside [0, K) as no class
        labels = labels.masked_fill(labels == ignore_index, -1)
        ignore_index = -1
    return CLASS_AVG_POOL(features.device, backend, features, labels, num_classes, ignore_index)


def _nearest_indices(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """Source index of each output index under ``F.interpolate(mode="nearest")``, (out_size,) int64.

    Interpolating the (small, hence exact in float32) index ramp reuses PyTorch's own rounding."""
    ramp = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1)
    return F.interpolate(ramp, size=out_size, mode="nearest").view(-1).long()


def downsample_labels(labels: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Nearest-neighbour downsampling of a (B, H, W) label map to ``size`` (as CSFRNet does for Eq. 1).

    Uses the index rule of ``F.interpolate(mode="nearest")`` on indices, never on the labels, so labels
    stay exact class ids of any integer dtype (an int64 label above 2**24 is not rounded through float32).
    """
    check_integer(labels, "labels", 3)
    pair = (size, size) if isinstance(size, int) else size
    if not isinstance(pair, (tuple, list, torch.Size)) or len(pair) != 2:
        raise ValueError(f"size must be an int or a pair of ints, got {size!r}")
    height, width = (check_int(value, "size", 1) for value in pair)
    if tuple(labels.shape[1:]) == (height, width):
        return labels
    if labels.shape[1] == 0 or labels.shape[2] == 0:
        raise ValueError(f"labels must have a non-empty spatial size, got shape {tuple(labels.shape)}")
    rows = _nearest_indices(labels.shape[1], height, labels.device)
    cols = _nearest_indices(labels.shape[2], width, labels.device)
    return labels[:, rows][:, :, cols]


class ClassAvgPool(nn.Module):
    """Module form of :func:`class_avg_pool`; labels are downsampled to the features' size first."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def forward(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        labels = downsample_labels(labels, features.shape[-2:])
        return class_avg_pool(features, labels, self.num_classes, self.ignore_index)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"
