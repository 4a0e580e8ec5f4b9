"""Triton kernels of soft class-wise pooling (ACFNet Eq. 2) and the attentional class feature (Eq. 3).

Three tl.dot tile kernels, all accumulating in fp32 (fp64 for fp64 inputs):

- ``_pixel_reduce_kernel``: ``out[b, k, c] = sum_j probs[b, k, j] * values[b, c, j]`` and the class
  mass ``sum_j probs[b, k, j]``, over a slice of pixels per program; the slices' partial sums are
  added in a fixed order on the host (deterministic). It gives Eq. 2's numerator and, in the
  backward of Eq. 3, ``dZ = P dA^T``.
- ``_class_expand_kernel``: ``out[b, c, j] = sum_k left[b, k, c] * probs[b, k, j]``: Eq. 3 with the
  centers, and ``dF = dS^T P`` with the scaled center gradient.
- ``_grad_probs_kernel``: ``dP[b, k, j] = sum_c dS[b, k, c] F[b, c, j] (+ Z[b, k, c] dA[b, c, j]) - r[b, k]``.

The formulas are derived in fastseg/ops/soft_class_pool.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pixel_reduce_kernel(
    probs, values, partial_sums, partial_mass,
    K, C, P, pixels_per_split,
    IS_FP64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    split = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    block_c = tl.program_id(1) % c_blocks
    block_k = tl.program_id(1) // c_blocks
    b = tl.program_id(2).to(tl.int64)
    batch = tl.num_programs(2)
    offs_k = block_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_c = block_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_k = offs_k < K
    mask_c = offs_c < C
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    sums = tl.zeros([BLOCK_K, BLOCK_C], dtype=acc_dtype)
    mass = tl.zeros([BLOCK_K], dtype=acc_dtype)
    start = split * pixels_per_split
    end = tl.minimum(start + pixels_per_split, P)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < end
        weights = tl.load(probs + (b * K + offs_k[:, None]) * P + offs_p[None, :],
                          mask=mask_k[:, None] & mask_p[None, :], other=0.0).to(acc_dtype)  # (BLOCK_K, BLOCK_P)
        tile = tl.load(values + (b * C + offs_c[None, :]) * P + offs_p[:, None],
                       mask=mask_p[:, None] & mask_c[None, :], other=0.0).to(acc_dtype)  # (BLOCK_P, BLOCK_C)
        sums += tl.dot(weights, tile, input_precision="ieee")
        mass += tl.sum(weights, axis=1)
    slot = tl.program_id(0).to(tl.int64) * batch + b
    tl.store(partial_sums + (slot * K + offs_k[:, None]) * C + offs_c[None, :], sums,
             mask=mask_k[:, None] & mask_c[None, :])
    if block_c == 0:
        tl.store(partial_mass + slot * K + offs_k, mass, mask=mask_k)


@triton.jit
def _class_expand_kernel(
    left, probs, out,
    K, C, P,
    IS_FP64: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    mask_p = offs_p < P
    mask_c = offs_c < C
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_dtype)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        coefficients = tl.load(left + (b * K + offs_k[None, :]) * C + offs_c[:, None],
                               mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(acc_dtype)  # (BLOCK_C, BLOCK_K)
        weights = tl.load(probs + (b * K + offs_k[:, None]) * P + offs_p[None, :],
                          mask=mask_k[:, None] & mask_p[None, :], other=0.0).to(acc_dtype)  # (BLOCK_K, BLOCK_P)
        acc += tl.dot(coefficients, weights, input_precision="ieee")
    tl.store(out + (b * C + offs_c[:, None]) * P + offs_p[None, :], acc.to(out.dtype.element_ty),
             mask=mask_c[:, None] & mask_p[None, :])


@triton.jit
def _grad_probs_kernel(
    scaled, features, centers, grad_attended, row_terms, out,
    K, C, P,
    HAS_ATTENTION: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    b = tl.program_id(2).to(tl.int64)
    mask_p = offs_p < P
    mask_k = offs_k < K
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    acc = tl.zeros([BLOCK_K, BLOCK_P], dtype=acc_dtype)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_kc = mask_k[:, None] & (offs_c[None, :] < C)
        mask_cp = (offs_c[:, None] < C) & mask_p[None, :]
        left = (b * K + offs_k[:, None]) * C + offs_c[None, :]
        right = (b * C + offs_c[:, None]) * P + offs_p[None, :]
        s = tl.load(scaled + left, mask=mask_kc, other=0.0).to(acc_dtype)
        f = tl.load(features + right, mask=mask_cp, other=0.0).to(acc_dtype)
        acc += tl.dot(s, f, input_precision="ieee")
        if HAS_ATTENTION:
            z = tl.load(centers + left, mask=mask_kc, other=0.0).to(acc_dtype)
            g = tl.load(grad_attended + right, mask=mask_cp, other=0.0).to(acc_dtype)
            acc += tl.dot(z, g, input_precision="ieee")
    r = tl.load(row_terms + b * K + offs_k, mask=mask_k, other=0.0)
    acc -= r[:, None]
    tl.store(out + (b * K + offs_k[:, None]) * P + offs_p[None, :], acc.to(out.dtype.element_ty),
             mask=mask_k[:, None] & mask_p[None, :])


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _class_block(num_classes: int) -> int:
    return min(64, max(16, triton.next_power_of_2(num_classes)))


def _num_splits(device: torch.device, programs: int, pixel_blocks: int) -> int:
    """Pixel slices per (image, class block, channel block): about four programs per SM on a GPU."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(pixel_blocks, triton.cdiv(4 * sms, programs)))


def _pixel_reduce(probs: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,K,C) sums_j probs[:, k, j] * values[:, c, j] and (B,K) mass, in the accumulation type."""
    batch, num_classes, pixels = probs.shape
    channels = values.shape[1]
    # The FMA dot holds each thread's operand rows and columns for all BLOCK_P pixels in registers, and one
    # prefetched tile (2 stages) hides the load latency behind a loop body of 600-1400 instructions. sm_90, 4 warps,
    # fp32, BLOCK_K 32/64: (BLOCK_P 64, 3 stages) spilled 4/16 B at 168 registers; now 168/125, no spill, 1.36/1.18
    # loop instructions per FFMA (were 1.38/1.18). bf16/fp64 at BLOCK_K=64 spill 32/8 B at BLOCK_P=16, none at 64.
    block_k, block_c = _class_block(num_classes), 64
    block_p = 16 if block_k == 64 and probs.dtype == torch.float32 else 64
    column_programs = triton.cdiv(num_classes, block_k) * triton.cdiv(channels, block_c)
    splits = _num_splits(probs.device, batch * column_programs, triton.cdiv(pixels, block_p))
    pixels_per_split = triton.cdiv(triton.cdiv(pixels, splits), block_p) * block_p
    splits = triton.cdiv(pixels, pixels_per_split) if pixels else 1
    acc_dtype = _acc_dtype(probs.dtype)
    partial_sums = torch.empty(splits, batch, num_classes, channels, device=probs.device, dtype=acc_dtype)
    partial_mass = torch.empty(splits, batch, num_classes, device=probs.device, dtype=acc_dtype)
    if pixels and channels:
        _pixel_reduce_kernel[(splits, column_programs, batch)](
            probs, values, partial_sums, partial_mass, num_classes, channels, pixels, pixels_per_split,
            IS_FP64=acc_dtype == torch.float64, BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_P=block_p,
            num_stages=2,
        )
    else:  # the kernel, which stores every partial, does not run
        partial_sums.zero_()
        partial_mass.zero_()
    return partial_sums.sum(dim=0), partial_mass.sum(dim=0)


def _class_expand(left: torch.Tensor, probs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,C,P) out[:, c, j] = sum_k left[:, k, c] * probs[:, k, j], stored in ``dtype``."""
    batch, num_classes, channels = left.shape
    pixels = probs.shape[2]
    out = torch.empty(batch, channels, pixels, device=probs.device, dtype=dtype)
    block_k, block_c, block_p = min(_class_block(num_classes), 32), 64, 64
    if out.numel():
        grid = (triton.cdiv(pixels, block_p), triton.cdiv(channels, block_c), batch)
        _class_expand_kernel[grid](
            left, probs, out, num_classes, channels, pixels,
            IS_FP64=_acc_dtype(dtype) == torch.float64, BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_P=block_p,
        )
    return out


def _divide_by_mass(sums: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """sums / mass per class row, 0 where the mass is exactly 0."""
    present = (mass != 0).unsqueeze(-1)
    return torch.where(present, sums / torch.where(present, mass.unsqueeze(-1), 1), 0)


def _centers(features: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened contiguous probs (B,K,P), accumulation-typed centers (B,K,C) and mass (B,K) (Eq. 2)."""
    weights = probs.flatten(2).contiguous()
    sums, mass = _pixel_reduce(weights, features.flatten(2).contiguous())
    return weights, _divide_by_mass(sums, mass), mass


def pool(features: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """centers (B,K,C) in features' dtype and mass (B,K) fp32/fp64; see fastseg.ops.soft_class_pool."""
    _, centers, mass = _centers(features, probs)
    return centers.to(features.dtype), mass


def attend(features: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """attended (B,C,H,W) (Eq. 3), centers (B,K,C) and mass (B,K)."""
    weights, centers, mass = _centers(features, probs)
    attended = _class_expand(centers, weights, features.dtype)
    return attended.view(features.shape), centers.to(features.dtype), mass


def backward(
    grad_centers: torch.Tensor | None,
    grad_attended: torch.Tensor | None,
    features: torch.Tensor,
    probs: torch.Tensor,
    centers: torch.Tensor,
    mass: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_features, grad_probs) from the gradient of the centers or, for Eq. 3, of the attended feature."""
    weights = probs.flatten(2).contiguous()
    feats = features.flatten(2).contiguous()
    batch, num_classes, pixels = weights.shape
    channels = feats.shape[1]
    if grad_attended is not None:
        grad_attended = grad_attended.flatten(2).contiguous()
        grad_centers, _ = _pixel_reduce(weights, grad_attended)  # dZ = P dA^T
    acc_dtype = _acc_dtype(features.dtype)
    scaled = _divide_by_mass(grad_centers.to(acc_dtype), mass)  # dS
    centers = centers.contiguous()
    row_terms = (scaled * centers.to(acc_dtype)).sum(dim=-1).contiguous()  # r
    grad_features = _class_expand(scaled, weights, features.dtype)
    grad_probs = torch.empty(batch, num_classes, pixels, device=probs.device, dtype=probs.dtype)
    if grad_probs.numel():
        block_k, block_c, block_p = _class_block(num_classes), 32, 64
        grid = (triton.cdiv(pixels, block_p), triton.cdiv(num_classes, block_k), batch)
        has_attention = grad_attended is not None
        _grad_probs_kernel[grid](
            scaled, feats, centers, grad_attended if has_attention else feats, row_terms, grad_probs,
            num_classes, channels, pixels,
            HAS_ATTENTION=has_attention, IS_FP64=acc_dtype == torch.float64,
            BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_P=block_p,
        )
    return grad_features.view(features.shape), grad_probs.view(probs.shape)
