"""Triton kernels of the Lovász hinge (Berman et al. 2018 Eq. 8-9), any row length.

Forward: the host computes the hinge errors (-inf for invalid pixels, so they sort last) and sorts
every row with torch.sort (stable, so ties keep pixel order as in the reference). One program per
row then counts the row's positives, and walks the sorted row in chunks: it gathers labels and
validity through the permutation, scans them with tl.cumsum while carrying the running counts
across chunks, and writes the row's loss and the Jaccard-gradient weights d loss / d logits[p] in
pixel order (at p = permutation[j]). Backward is the streaming multiply grad_loss[n] * weights[n, p].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _jaccard(gts, positives, negatives):
    """J = 1 - (gts - positives) / (gts + negatives) of the first sorted pixels; 0 for an empty union."""
    union = gts + negatives.to(gts.dtype)
    return tl.where(union > 0, 1 - (gts - positives.to(gts.dtype)) / tl.maximum(union, 1), 0)


@triton.jit
def _scan_kernel(
    errors_sorted, permutation, labels, valid, loss, weights, P,
    HAS_VALID: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * P
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    positives = tl.zeros([BLOCK], dtype=tl.int32)
    for p0 in range(0, P, BLOCK):
        offs = p0 + tl.arange(0, BLOCK)
        mask = offs < P
        y = tl.load(labels + row + offs, mask=mask, other=0).to(tl.int32)
        if HAS_VALID:
            y = y * tl.load(valid + row + offs, mask=mask, other=0).to(tl.int32)
        positives += y
    gts = tl.sum(positives, axis=0).to(acc_dtype)

    pos_carry = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)
    neg_carry = pos_carry
    total = tl.zeros([BLOCK], dtype=acc_dtype)
    for p0 in range(0, P, BLOCK):
        offs = p0 + tl.arange(0, BLOCK)
        mask = offs < P
        index = tl.load(permutation + row + offs, mask=mask, other=0)
        error = tl.load(errors_sorted + row + offs, mask=mask, other=0.0)
        if HAS_VALID:
            v = tl.load(valid + row + index, mask=mask, other=0).to(tl.int32)
        else:
            v = mask.to(tl.int32)
        y = tl.load(labels + row + index, mask=mask, other=0).to(tl.int32) * v
        n_step = v - y
        pos = pos_carry + tl.cumsum(y, axis=0)
        neg = neg_carry + tl.cumsum(n_step, axis=0)
        # Eq. 9: g_j = J(counts through j) - J(counts before j); invalid pixels change no count
        grad = _jaccard(gts, pos, neg) - _jaccard(gts, pos - y, neg - n_step)
        active = ((error > 0) | (error != error)) & (v != 0)  # a NaN error is active: NaN in, NaN loss out
        total += tl.where(active, error, 0) * grad  # Eq. 8 with relu(errors); invalid errors are -inf
        tl.store(weights + row + index, tl.where(active, tl.where(y != 0, -grad, grad), 0), mask=mask)  # pixel order
        pos_carry += tl.sum(y, axis=0)
        neg_carry += tl.sum(n_step, axis=0)
    tl.store(loss + tl.program_id(0), tl.sum(total, axis=0))


@triton.jit
def _scale_kernel(grad_loss, weights, grad_logits, P, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < P
    w = tl.load(weights + n * P + offs, mask=mask, other=0.0)
    g = tl.load(grad_loss + n).to(w.dtype)
    tl.store(grad_logits + n * P + offs, (g * w).to(grad_logits.dtype.element_ty), mask=mask)


def forward(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (N,) in logits' dtype, weights (N,P) float32/float64 in pixel order)."""
    rows, pixels = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    labels = labels.contiguous()
    errors = 1 - logits.to(acc) * (2 * labels.to(acc) - 1)
    if valid is not None:
        valid = valid.contiguous()
        errors = errors.masked_fill(~valid, float("-inf"))
    errors_sorted, permutation = torch.sort(errors, dim=1, descending=True, stable=True)
    # every row's loss is stored by the scan; only rows without pixels keep a 0 (no memset launch otherwise)
    loss = (torch.empty if pixels else torch.zeros)(rows, device=logits.device, dtype=acc)
    weights = torch.empty(rows, pixels, device=logits.device, dtype=acc)
    if rows and pixels:
        labels_u8 = labels.view(torch.uint8)
        _scan_kernel[(rows,)](
            errors_sorted, permutation, labels_u8, valid.view(torch.uint8) if valid is not None else labels_u8,
            loss, weights, pixels, HAS_VALID=valid is not None, IS_FP64=acc == torch.float64, BLOCK=_BLOCK,
        )
    return loss.to(logits.dtype), weights


def backward(grad_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """grad_logits (N,P) in grad_loss' dtype: grad_logits[n, p] = grad_loss[n] * weights[n, p]."""
    rows, pixels = weights.shape
    grad_logits = torch.empty(rows, pixels, device=grad_loss.device, dtype=grad_loss.dtype)
    if rows and pixels:
        _scale_kernel[(rows, triton.cdiv(pixels, _BLOCK))](
            grad_loss.contiguous(), weights.contiguous(), grad_logits, pixels, BLOCK=_BLOCK,
        )
    return grad_logits
