"""Lovász-softmax: the multi-class Jaccard surrogate of Berman et al. 2018 (Sec. 3.2), on the fused rows.

For each class c, over the non-ignored pixels: foreground ``fg = [label == c]``, errors
``|fg - p_c|``, and the Lovász extension of the Jaccard loss of those errors. These are exactly
the hinge errors ``1 - x s`` of the logits ``x = p_c + fg - 1`` with signs ``s = 2 fg - 1``, all
non-negative, so every class is one row of the fused Lovász hinge: rows are (class) over the
whole batch, or (image, class) with ``per_image``. Class averages use masks and weighted means,
never a host synchronisation.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fastseg.ops.checks import check_bool, check_float, check_integer, check_labels, check_same_device, check_size
from fastseg.ops.lovasz_hinge import accumulate_dtype, jaccard_gradient, lovasz_rows


def _class_ids(classes: str | Sequence[int], num_classes: int, device: torch.device) -> Tensor:
    """The class ids whose rows are computed: all K for "present" and "all", else the given list."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f'classes must be "present", "all" or a list of class ids, got {classes!r}')
        return torch.arange(num_classes, device=device)
    ids = list(classes) if isinstance(classes, (list, tuple)) else []
    if not ids or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes for c in ids):
        raise ValueError(f"classes must be a non-empty list of class ids in [0, {num_classes}), got {classes!r}")
    return torch.tensor(ids, device=device)


def _flat_loss(probs: Tensor, labels: Tensor, classes: str | Sequence[int]) -> Tensor:
    """Berman et al.'s loss of flat non-ignored pixels: probs (P,K), labels (P,), per class one sort."""
    ids = range(probs.shape[1]) if isinstance(classes, str) else classes
    losses = []
    for c in ids:
        fg = (labels == c).to(probs.dtype)
        if classes == "present" and not bool(fg.any()):
            continue
        if fg.numel() == 0:
            losses.append(probs.sum() * 0)
            continue
        errors_sorted, order = torch.sort((fg - probs[:, c]).abs(), descending=True)
        losses.append(torch.dot(errors_sorted, jaccard_gradient(fg[order], torch.ones_like(fg))))
    return torch.stack(losses).mean() if losses else probs.sum() * 0


def lovasz_softmax_reference(
    probs: Tensor, labels: Tensor, classes: str | Sequence[int] = "present", per_image: bool = False,
    ignore_index: int = 255,
) -> Tensor:
    """The readable Lovász-softmax: loops over images and classes, one sort each (host syncs included).

    Same arguments and result as :func:`lovasz_softmax`; float32 math for fp16/bf16 probs.
    """
    acc = accumulate_dtype(probs.dtype)
    flat_probs = probs.to(acc).permute(0, 2, 3, 1).reshape(probs.shape[0], -1, probs.shape[1])  # (B,HW,K)
    flat_labels = labels.reshape(labels.shape[0], -1)
    if per_image:
        losses = [_flat_loss(p[l != ignore_index], l[l != ignore_index], classes)
                  for p, l in zip(flat_probs, flat_labels)]
        return torch.stack(losses).mean().to(probs.dtype)
    keep = flat_labels.reshape(-1) != ignore_index
    return _flat_loss(flat_probs.reshape(-1, probs.shape[1])[keep], flat_labels.reshape(-1)[keep], classes).to(probs.dtype)


def lovasz_softmax(
    probs: Tensor,
    labels: Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore_index: int = 255,
    *,
    backend: str | None = None,
) -> Tensor:
    """Lovász-softmax loss (Berman et al. 2018, Sec. 3.2), a scalar in probs' dtype.

    Args:
        probs: (B, K, H, W) class probabilities (a softmax output).
        labels: (B, H, W) integer class ids in [0, K) or ``ignore_index``.
        classes: "present" averages over the classes present in the (non-ignored) labels, "all"
            over all K classes, or a list of class ids.
        per_image: average per image first (classes present in that image), then over images;
            otherwise one row per class over the whole batch.
        ignore_index: label of pixels that take no part.
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        The loss, differentiable w.r.t. probs; 0 when no class is present.
    """
    check_float(probs, "probs", 4)
    check_integer(labels, "labels", 3)
    check_same_device(probs=probs, labels=labels)
    check_size(labels.shape[0], probs.shape[0], "labels batch size")
    if labels.shape[1:] != probs.shape[2:]:
        raise ValueError(f"labels spatial size {tuple(labels.shape[1:])} differs from probs {tuple(probs.shape[2:])}")
    batch, num_classes = probs.shape[:2]
    check_bool(per_image, "per_image")
    if per_image and batch == 0:
        raise ValueError("per_image=True needs at least one image: probs has batch size 0")
    check_labels(labels, num_classes, ignore_index)
    ids = _class_ids(classes, num_classes, probs.device)
    acc = accumulate_dtype(probs.dtype)

    valid = (labels != ignore_index).unsqueeze(1)  # (B,1,H,W)
    fg = (labels.unsqueeze(1) == ids.view(1, -1, 1, 1)) & valid  # (B,C,H,W)
    p = probs.to(acc) if isinstance(classes, str) else probs.to(acc).index_select(1, ids)
    shifted = p + fg.to(acc) - 1  # hinge logits whose errors are |fg - p|
    if per_image:  # rows (image, class), pixels (H*W)
        fg, shifted, valid = fg.flatten(2), shifted.flatten(2), valid.flatten(2)
    else:  # rows (class), pixels (B*H*W)
        fg, shifted, valid = fg.transpose(0, 1), shifted.transpose(0, 1), valid.transpose(0, 1)
    groups = batch if per_image else 1
    valid = valid.expand_as(fg)
    rows = groups * len(ids)
    losses = lovasz_rows(shifted.reshape(rows, -1), fg.reshape(rows, -1), valid.reshape(rows, -1), backend)
    losses = losses.view(groups, len(ids))
    if classes == "present":
        weights = fg.reshape(groups, len(ids), -1).any(-1).to(acc)
    else:
        weights = torch.ones_like(losses)
    per_group = (losses * weights).sum(-1) / weights.sum(-1).clamp(min=1)
    return per_group.mean().to(probs.dtype)
