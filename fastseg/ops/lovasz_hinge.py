"""Lovász hinge: the Lovász extension of the Jaccard loss over hinge errors, one loss per row.

Berman et al. 2018, "The Lovász-Softmax loss", Eq. 8-9, with the hinge errors of Yu & Blaschko
2015; CSFRNet Eq. 4 uses it as the binary loss of the class-aware consistency loss.

Per row, over its valid pixels only: signs ``s = 2y - 1``, errors ``e = 1 - logits * s`` sorted
in decreasing order (permutation ``pi``, stable: tied errors keep pixel order on every backend);
``J_j = 1 - (gts - cumsum(y_pi)_j) / (gts + cumsum(1 - y_pi)_j)`` is the Jaccard loss of the first
j sorted pixels, ``g_j = J_j - J_{j-1}`` (``J_0 = 0``) its Lovász gradient, and ``loss = sum_j
relu(e_pi_j) g_j``. Hence ``d loss / d logits_pi_j = -s_pi_j g_j [e_pi_j > 0]``: the fused forward
ops store these weights in pixel order (``weights[n, pi_j] = ...``, (N,P), float32 or float64), so
backward is the streaming multiply ``grad_loss[:, None] * weights``, without sorting or gathering.
A row without valid pixels has loss 0 and zero gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastseg.ops.checks import check_float, check_same_device
from fastseg.ops.library import FusedOp, OpPair, first_output


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (counts and sums of fp16/bf16 rows)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def jaccard_gradient(gt_sorted: Tensor, valid_sorted: Tensor) -> Tensor:
    """Lovász gradient of the Jaccard loss (Berman et al. Eq. 9) along the last dimension.

    Shapes: gt_sorted and valid_sorted (..., P) floating 0/1, ordered by decreasing error, with
    gt_sorted zero where valid_sorted is. Invalid entries change no count, so their gradient is 0.
    """
    gts = gt_sorted.sum(-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(-1)
    union = gts + (valid_sorted - gt_sorted).cumsum(-1)
    jaccard = torch.where(union > 0, 1 - intersection / union.clamp(min=1), 0)
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


def lovasz_hinge_per_row(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """The readable per-row Lovász hinge: one sort per row, as in Berman et al.'s code.

    Shapes: logits (N,P) float, labels (N,P) 0/1, valid (N,P) bool or None -> losses (N,) in
    logits' dtype (computed in float32 for fp16/bf16).
    """
    acc = accumulate_dtype(logits.dtype)
    losses = []
    for n in range(logits.shape[0]):
        keep = valid[n] if valid is not None else torch.ones_like(labels[n], dtype=torch.bool)
        x = logits[n][keep].to(acc)
        if x.numel() == 0:
            losses.append(logits[n].to(acc).sum() * 0)
            continue
        y = labels[n][keep].to(acc)
        errors = 1 - x * (2 * y - 1)
        errors_sorted, order = torch.sort(errors, descending=True)
        grad = jaccard_gradient(y[order], torch.ones_like(y))
        losses.append(torch.dot(F.relu(errors_sorted), grad))
    if not losses:
        return logits.new_zeros(0)
    return torch.stack(losses).to(logits.dtype)


def lovasz_hinge_reference(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """The batched Lovász hinge in plain PyTorch (the ``reference`` backend): one sort of all rows,
    gather, cumsum.

    Invalid pixels get the key -inf, so they sort last and change no count. Same shapes as
    :func:`lovasz_hinge_per_row`.
    """
    acc = accumulate_dtype(logits.dtype)
    labels = labels.to(torch.bool)
    valid = valid if valid is not None else torch.ones_like(labels)
    errors = 1 - logits.to(acc) * (2 * labels.to(acc) - 1)
    errors_sorted, order = errors.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True, stable=True)
    valid_sorted = valid.gather(1, order)
    gt_sorted = labels.gather(1, order) & valid_sorted
    grad = jaccard_gradient(gt_sorted.to(acc), valid_sorted.to(acc))
    return (F.relu(errors_sorted) * grad).sum(dim=1).to(logits.dtype)


def _forward_triton(logits: Tensor, labels: Tensor, valid: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    from fastseg.kernels import lovasz_hinge as kernels

    return kernels.forward(logits, labels, valid)


def _backward_triton(grad_loss: Tensor, weights: Tensor) -> Tensor:
    from fastseg.kernels import lovasz_hinge as kernels

    return kernels.backward(grad_loss, weights)


def _fake_forward(logits, labels, valid):
    rows, pixels = logits.shape
    weights = logits.new_empty(rows, pixels, dtype=accumulate_dtype(logits.dtype))
    return logits.new_empty(rows), weights


def _fake_backward(grad_loss, weights):
    return grad_loss.new_empty(weights.shape)


def _setup_context(ctx, inputs, output):
    _, weights = output
    ctx.save_for_backward(weights)


def _autograd_backward(pair: OpPair):
    def backward(ctx, grad_loss, grad_weights):
        (weights,) = ctx.saved_tensors
        return pair.backward(grad_loss.contiguous(), weights), None, None

    return backward


LOVASZ_HINGE = FusedOp("lovasz_hinge", lovasz_hinge_reference, _forward_triton, _backward_triton, _fake_forward,
                       _fake_backward, _setup_context, _autograd_backward, fused_result=first_output,
                       autocast="fp32")


def lovasz_rows(logits: Tensor, labels: Tensor, valid: Tensor | None, backend: str | None) -> Tensor:
    """Per-row Lovász hinge on already validated inputs: labels and valid bool (N,P), same device."""
    return LOVASZ_HINGE(logits.device, backend, logits, labels, valid)


def _check_mask(tensor: Tensor, name: str, like: Tensor) -> None:
    """A bool or integer tensor of the same shape as ``like``."""
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must be a bool or integer tensor, got {tensor.dtype}")
    if tensor.shape != like.shape:
        raise ValueError(f"{name} shape {tuple(tensor.shape)} differs from logits {tuple(like.shape)}")


def lovasz_hinge(
    logits: Tensor, labels: Tensor, valid: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """Per-row Lovász hinge loss (Berman et al. Eq. 8-9 on hinge errors; CSFRNet Eq. 4).

    Args:
        logits: (N, P) floating point scores, positive for the positive class.
        labels: (N, P) bool, or integer in {0, 1} (checked where valid: a ValueError on the CPU, a
            device-side assertion on a GPU, which fails the next synchronising call).
        valid: (N, P) bool, the pixels that take part; None for all.
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        losses (N,) in logits' dtype; a row without valid pixels gives 0. Differentiable w.r.t. logits.
    """
    check_float(logits, "logits", 2)
    _check_mask(labels, "labels", logits)
    check_same_device(logits=logits, labels=labels)
    if valid is not None:
        _check_mask(valid, "valid", logits)
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
        check_same_device(logits=logits, valid=valid)
    if labels.dtype != torch.bool:
        if not torch.compiler.is_compiling() and labels.numel():
            outside = (labels != 0) & (labels != 1)
            if valid is not None:
                outside &= valid
            if labels.device.type != "cpu":  # no host sync (fastseg.ops.checks.check_labels does the same)
                torch._assert_async(~outside.any(), "labels must be 0 or 1 where valid")
            elif bool(outside.any()):
                raise ValueError(f"labels must be 0 or 1 where valid, got {int(labels[outside][0])}")
        labels = labels != 0
    return lovasz_rows(logits, labels, valid, backend)
