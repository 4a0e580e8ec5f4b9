"""Triton kernels of gaussian_center_distance (CSFRNet Eq. 2 with the exp(m_k * delta) scale).

Tiles are (pixels x classes). Squared distances use the direct difference form, one channel at a
time: ||b||^2 - 2 b.s + ||s||^2 with ``tl.dot`` loses most digits exactly where it matters, at pixels
whose embedding is close to its center (phi ~ 0), so it is not used.
Forward: one program per (pixel block, class block, image). Backward (nothing is saved by the
forward, both kernels recompute the distances): one kernel per (pixel block, image) accumulates the
embedding gradient over all classes in registers; one per (pixel slice, class block, image)
accumulates the center and margin sums of its slice in registers. Each value is stored once, and the
host adds the slices' partial sums in slice order, so the result is deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastseg.ops.gaussian_center_distance import accumulate_dtype, log_scale_max

BLOCK_P = 64


@triton.jit
def _squared_distances(
    image, centers, offs_p, offs_k, mask_p, mask_k, C, P,
    IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """(BLOCK_P, BLOCK_K) tile of ||b_p - s_k||^2; image points at (C', P), centers at (K, C')."""
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    distance = tl.zeros([BLOCK_P, BLOCK_K], dtype=acc_dtype)
    for c in range(0, C):
        x = tl.load(image + c * P + offs_p, mask=mask_p, other=0.0).to(acc_dtype)
        s = tl.load(centers + offs_k * C + c, mask=mask_k, other=0.0).to(acc_dtype)
        diff = x[:, None] - s[None, :]
        distance += diff * diff
    return distance


@triton.jit
def _forward_kernel(
    embeddings, centers, scales, phi,
    C, P, K,
    IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    b = tl.program_id(2).to(tl.int64)
    mask_p = offs_p < P
    mask_k = offs_k < K
    distance = _squared_distances(embeddings + b * C * P, centers + b * K * C, offs_p, offs_k, mask_p, mask_k, C, P,
                                  IS_FP64, BLOCK_P, BLOCK_K)
    scale = tl.load(scales + b * K + offs_k, mask=mask_k, other=0.0)
    value = 1.0 - tl.exp(-distance * scale[None, :])  # Eq. 2
    tl.store(phi + (b * K + offs_k[None, :]) * P + offs_p[:, None], value.to(phi.dtype.element_ty),
             mask=mask_p[:, None] & mask_k[None, :])


@triton.jit
def _weights(
    grad_phi, image, centers, scales, b, offs_p, offs_k, mask_p, mask_k, C, P, K,
    IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward of Eq. 2 on a (BLOCK_P, BLOCK_K) tile, recomputing the distances.

    With d2 = ||b - s||^2, t = d2 * scale, e = exp(-t): dphi/dd2 = scale * e, dd2/db = 2 (b - s) =
    -dd2/ds, dphi/dm = t * e * d(log scale)/dm (the last factor is applied on the host). Returns
    (2 * grad * scale * e, grad * t * e).
    """
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    distance = _squared_distances(image, centers + b * K * C, offs_p, offs_k, mask_p, mask_k, C, P,
                                  IS_FP64, BLOCK_P, BLOCK_K)
    scale = tl.load(scales + b * K + offs_k, mask=mask_k, other=0.0)
    exponent = distance * scale[None, :]
    e = tl.exp(-exponent)
    g = tl.load(grad_phi + (b * K + offs_k[None, :]) * P + offs_p[:, None],
                mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(acc_dtype)
    # e == 0 covers t == inf, where t * e would be inf * 0; lanes outside the tile get weight 0 (their
    # scale is 0, and an infinite embedding makes their exponent inf * 0 = NaN)
    inside = mask_p[:, None] & mask_k[None, :]
    return tl.where(inside, 2.0 * g * scale[None, :] * e, 0.0), tl.where(inside & (e > 0), g * exponent * e, 0.0)


@triton.jit
def _grad_embeddings_kernel(
    grad_phi, embeddings, centers, scales, grad_embeddings,
    C, P, K,
    IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_b[c, p] = sum_k w[p, k] (b_p - s_k)[c], accumulated in registers over the class blocks."""
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = tl.program_id(1).to(tl.int64)
    mask_p = offs_p < P
    offs_c = tl.arange(0, BLOCK_C)
    image = embeddings + b * C * P
    grad = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_dtype)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        weight, _ = _weights(grad_phi, image, centers, scales, b, offs_p, offs_k, mask_p, mask_k, C, P, K,
                             IS_FP64, BLOCK_P, BLOCK_K)
        for c in range(0, C):
            x = tl.load(image + c * P + offs_p, mask=mask_p, other=0.0).to(acc_dtype)
            s = tl.load(centers + (b * K + offs_k) * C + c, mask=mask_k, other=0.0).to(acc_dtype)
            row = tl.sum(tl.where(weight != 0, weight * (x[:, None] - s[None, :]), 0.0), axis=1)
            grad = tl.where(offs_c[:, None] == c, grad + row[None, :], grad)
    tl.store(grad_embeddings + (b * C + offs_c[:, None]) * P + offs_p[None, :],
             grad.to(grad_embeddings.dtype.element_ty), mask=(offs_c[:, None] < C) & mask_p[None, :])


@triton.jit
def _class_partials_kernel(
    grad_phi, embeddings, centers, scales, partial_centers, partial_margins,
    C, P, K, blocks_per_slice,
    IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per pixel slice: sum_p w[p, k] (b_p - s_k)[c] and sum_p grad t e, accumulated in registers."""
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    slice_id = tl.program_id(0)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    b = tl.program_id(2).to(tl.int64)
    mask_k = offs_k < K
    offs_c = tl.arange(0, BLOCK_C)
    image = embeddings + b * C * P
    center_sums = tl.zeros([BLOCK_K, BLOCK_C], dtype=acc_dtype)
    margin_sums = tl.zeros([BLOCK_K], dtype=acc_dtype)
    first = slice_id * blocks_per_slice
    for block in range(first, tl.minimum(first + blocks_per_slice, tl.cdiv(P, BLOCK_P))):
        offs_p = block * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        weight, margin = _weights(grad_phi, image, centers, scales, b, offs_p, offs_k, mask_p, mask_k, C, P, K,
                                  IS_FP64, BLOCK_P, BLOCK_K)
        margin_sums += tl.sum(margin, axis=0)
        for c in range(0, C):
            x = tl.load(image + c * P + offs_p, mask=mask_p, other=0.0).to(acc_dtype)
            s = tl.load(centers + (b * K + offs_k) * C + c, mask=mask_k, other=0.0).to(acc_dtype)
            column = tl.sum(tl.where(weight != 0, weight * (x[:, None] - s[None, :]), 0.0), axis=0)
            center_sums = tl.where(offs_c[None, :] == c, center_sums + column[:, None], center_sums)
    slot = b * tl.num_programs(0) + slice_id
    tl.store(partial_centers + (slot * K + offs_k[:, None]) * C + offs_c[None, :], center_sums,
             mask=mask_k[:, None] & (offs_c[None, :] < C))
    tl.store(partial_margins + slot * K + offs_k, margin_sums, mask=mask_k)


def _class_terms(margins: torch.Tensor, delta: float, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """scale = exp(min(m * delta, max)) and d(log scale)/dm (delta, 0 where clamped), both (B,K) in acc."""
    log_scale = margins.to(acc) * delta
    limit = log_scale_max(acc)
    scale = log_scale.clamp(max=limit).exp().contiguous()
    dlog_scale = delta * (log_scale <= limit).to(acc)
    return scale, dlog_scale


def _block_k(num_classes: int) -> int:
    return min(32, max(16, triton.next_power_of_2(max(num_classes, 1))))


def _slices(device: torch.device, batch: int, pixel_blocks: int) -> int:
    """Pixel slices per image: about four programs per SM on a GPU; two under the interpreter, so
    that the tests cover the cross-slice reduction."""
    wanted = triton.cdiv(4 * torch.cuda.get_device_properties(device).multi_processor_count, batch) \
        if device.type == "cuda" else 2
    return max(1, min(pixel_blocks, wanted))


def forward(embeddings: torch.Tensor, centers: torch.Tensor, margins: torch.Tensor, delta: float) -> torch.Tensor:
    """phi (B,K,H,W) in the embeddings' dtype; see fastseg.ops.gaussian_center_distance."""
    x = embeddings.contiguous()
    s = centers.contiguous()
    batch, channels, height, width = x.shape
    num_classes = s.shape[1]
    pixels = height * width
    acc = accumulate_dtype(x.dtype)
    scale, _ = _class_terms(margins, delta, acc)
    phi = torch.empty(batch, num_classes, height, width, device=x.device, dtype=x.dtype)
    if phi.numel():
        block_k = _block_k(num_classes)
        grid = (triton.cdiv(pixels, BLOCK_P), triton.cdiv(num_classes, block_k), batch)
        _forward_kernel[grid](x, s, scale, phi, channels, pixels, num_classes,
                              IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P, BLOCK_K=block_k)
    return phi


def backward(
    grad_phi: torch.Tensor, embeddings: torch.Tensor, centers: torch.Tensor, margins: torch.Tensor, delta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_embeddings, grad_centers, grad_margins), each in the embeddings' dtype and its input's shape."""
    x = embeddings.contiguous()
    s = centers.contiguous()
    grad = grad_phi.contiguous()
    batch, channels, height, width = x.shape
    num_classes = s.shape[1]
    pixels = height * width
    acc = accumulate_dtype(x.dtype)
    is_fp64 = acc == torch.float64
    scale, dlog_scale = _class_terms(margins, delta, acc)
    block_c = triton.next_power_of_2(max(channels, 1))
    block_k = _block_k(num_classes)
    # the (C', pixels) gradient tile lives in registers: fewer pixels per program for wide embeddings
    block_p = max(16, min(BLOCK_P, 4096 // block_c))
    pixel_blocks = triton.cdiv(pixels, block_p)
    slices = _slices(x.device, batch, pixel_blocks) if pixel_blocks else 1
    grad_embeddings = torch.empty_like(x)
    partial_centers = torch.empty(batch, slices, num_classes, channels, device=x.device, dtype=acc)
    partial_margins = torch.empty(batch, slices, num_classes, device=x.device, dtype=acc)
    if grad_embeddings.numel():
        if num_classes:
            _grad_embeddings_kernel[(pixel_blocks, batch)](
                grad, x, s, scale, grad_embeddings, channels, pixels, num_classes,
                IS_FP64=is_fp64, BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_C=block_c,
            )
        else:
            grad_embeddings.zero_()
    if batch and pixels and num_classes:
        _class_partials_kernel[(slices, triton.cdiv(num_classes, block_k), batch)](
            grad, x, s, scale, partial_centers, partial_margins, channels, pixels, num_classes,
            triton.cdiv(pixel_blocks, slices),
            IS_FP64=is_fp64, BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_C=block_c,
        )
    else:  # no pixels: the kernel, which stores every partial, does not run
        partial_centers.zero_()
        partial_margins.zero_()
    grad_centers = -partial_centers.sum(dim=1)
    grad_margins = dlog_scale * partial_margins.sum(dim=1)
    return grad_embeddings, grad_centers.to(x.dtype), grad_margins.to(x.dtype)
