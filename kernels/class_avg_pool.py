"""Triton kernels of class_avg_pool (CSFRNet Eq. 1/3).

Forward: each program owns (image, block of channels, block of classes, slice of pixels) and
accumulates ``features_tile @ onehot(labels_tile)`` with ``tl.dot``; the per-slice partial sums are
added in a fixed order on the host side, so the result is deterministic. Backward gathers
``grad_centers[b, label, c] / count[b, label]`` for every pixel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(
    features, labels, partial_sums, partial_counts,
    C, P, K, pixels_per_split,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    split = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    block_c = tl.program_id(1) % c_blocks
    block_k = tl.program_id(1) // c_blocks
    b = tl.program_id(2).to(tl.int64)
    num_splits = tl.num_programs(0)
    batch = tl.num_programs(2)
    offs_c = block_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = block_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    sums = tl.zeros([BLOCK_C, BLOCK_K], dtype=acc_dtype)
    counts = tl.zeros([BLOCK_K], dtype=tl.int32)
    start = split * pixels_per_split
    end = tl.minimum(start + pixels_per_split, P)
    for p0 in range(start, end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < end
        label = tl.load(labels + b * P + offs_p, mask=mask_p, other=-1)
        onehot = label[:, None] == offs_k[None, :]  # (BLOCK_P, BLOCK_K); labels outside [0, K) match nothing
        tile = tl.load(features + (b * C + offs_c[:, None]) * P + offs_p[None, :],
                       mask=mask_c[:, None] & mask_p[None, :], other=0.0)
        # 0/1 weights: an exact fp32 (fp64) matmul, whatever the input precision
        sums += tl.dot(tile.to(acc_dtype), onehot.to(acc_dtype), input_precision="ieee")
        counts += tl.sum(onehot.to(tl.int32), axis=0)
    out = ((split * batch + b) * K + offs_k[None, :]) * C + offs_c[:, None]
    tl.store(partial_sums + out, sums, mask=mask_c[:, None] & (offs_k[None, :] < K))
    if block_c == 0:
        tl.store(partial_counts + (split * batch + b) * K + offs_k, counts, mask=offs_k < K)


@triton.jit
def _backward_kernel(
    grad_centers, labels, counts, grad_features,
    C, P, K,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    mask_p = offs_p < P
    mask_c = offs_c < C
    label = tl.load(labels + b * P + offs_p, mask=mask_p, other=-1)
    valid = (label >= 0) & (label < K)
    label = tl.where(valid, label, 0)
    n = tl.load(counts + b * K + label, mask=valid, other=1)
    g = tl.load(grad_centers + (b * K + label[None, :]) * C + offs_c[:, None],
                mask=mask_c[:, None] & valid[None, :], other=0.0)
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    value = g.to(acc_dtype) / tl.maximum(n, 1).to(acc_dtype)[None, :]
    tl.store(grad_features + (b * C + offs_c[:, None]) * P + offs_p[None, :],
             value.to(grad_features.dtype.element_ty), mask=mask_c[:, None] & mask_p[None, :])


def _num_splits(device: torch.device, programs: int, pixel_blocks: int) -> int:
    """Pixel slices per (image, channel block, class block): about four programs per SM on a GPU."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(pixel_blocks, triton.cdiv(4 * sms, programs)))


def forward(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """centers (B,K,C) in features' dtype and counts (B,K) int64; see fastseg.ops.class_avg_pool."""
    features = features.contiguous()
    labels = labels.contiguous()
    batch, channels, height, width = features.shape
    pixels = height * width
    # The FMA dot (fp32/fp64) holds each thread's operand rows and columns for all BLOCK_P pixels in registers:
    # sm_90, 4 warps, fp32, BLOCK_K 32/64: BLOCK_P=64 spilled 0.5/1.5 KB; BLOCK_P=16 needs 168/203 registers,
    # no spill, and its loop issues 1.58/1.45 instructions per FFMA (BLOCK_P=64, BLOCK_K=32: 1.59 + 133 LDL/STL).
    # fp64 values take two registers: BLOCK_C=32 needs 72/96/158 registers at BLOCK_K 16/32/64 (64: 16 B spilled at 16).
    is_fp64 = features.dtype == torch.float64
    block_c, block_p = 32 if is_fp64 else 64, 16
    block_k = min(64, max(16, triton.next_power_of_2(num_classes)))
    column_programs = triton.cdiv(channels, block_c) * triton.cdiv(num_classes, block_k)
    splits = _num_splits(features.device, batch * column_programs, triton.cdiv(pixels, block_p))
    pixels_per_split = triton.cdiv(triton.cdiv(pixels, splits), block_p) * block_p
    splits = triton.cdiv(pixels, pixels_per_split) if pixels else 1
    acc_dtype = torch.float64 if is_fp64 else torch.float32
    partial_sums = torch.empty(splits, batch, num_classes, channels, device=features.device, dtype=acc_dtype)
    partial_counts = torch.empty(splits, batch, num_classes, device=features.device, dtype=torch.int32)
    if features.numel() == 0:
        partial_sums.zero_()
        partial_counts.zero_()
    else:
        _forward_kernel[(splits, column_programs, batch)](
            features, labels, partial_sums, partial_counts, channels, pixels, num_classes, pixels_per_split,
            IS_FP64=is_fp64, BLOCK_C=block_c, BLOCK_P=block_p, BLOCK_K=block_k,
        )
    counts = partial_counts.sum(dim=0, dtype=torch.int64)
    centers = partial_sums.sum(dim=0) / counts.clamp(min=1).unsqueeze(-1).to(acc_dtype)
    return centers.to(features.dtype), counts


def backward(grad_centers: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """grad_features (B,C,H,W) = grad_centers[b, label, c] / counts[b, label] (0 where ignored)."""
    grad_centers = grad_centers.contiguous()
    labels = labels.contiguous()
    counts = counts.contiguous()
    batch, num_classes, channels = grad_centers.shape
    height, width = labels.shape[1:]
    grad_features = torch.empty(batch, channels, height, width, device=grad_centers.device, dtype=grad_centers.dtype)
    block_c, block_p = 32, 128
    grid = (triton.cdiv(height * width, block_p), triton.cdiv(channels, block_c), batch)
    if grad_features.numel():
        _backward_kernel[grid](
            grad_centers, labels, counts, grad_features, channels, height * width, num_classes,
            IS_FP64=grad_centers.dtype == torch.float64, BLOCK_C=block_c, BLOCK_P=block_p,
        )
    return grad_features
