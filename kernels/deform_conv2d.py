"""Triton kernels of deformable convolution v1/v2 (CSFRNet Eq. 6), torchvision's semantics.

Implicit GEMM: a program owns (block of output pixels, block of output channels, image) and, for
every kernel tap and block of input channels, gathers the bilinear samples into a (pixels x
channels) tile that feeds ``tl.dot`` with the matching weight tile; nothing is materialised.
The input channels are walked in segments of gcd(C_in/groups, C_in/offset_groups) channels, inside
which the conv group and the offset group are constant, so each sample position is computed once
per (tap, segment) and reused by the segment's channels.

Backward: one kernel rebuilds grad_columns = grad_out @ W tile by tile and scatters them into
grad_input (atomics) and reduces them against the sampling derivative into grad_offset/grad_mask
(atomics, since several channel blocks share an offset group); a second kernel computes grad_weight
= grad_out^T @ sampled tiles with deterministic per-split partial sums. Because of the atomics the
backward refuses to run under torch.use_deterministic_algorithms(True).
"""
from __future__ import annotations

import math
import warnings

import torch
import triton
import triton.language as tl


@triton.jit
def _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w, pad_h, pad_w,
                     dil_h, dil_w, taps, offset_groups, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """Sampling coordinates (y, x) and modulation m (all (BM,) in ACC) of one tap, offset group and image."""
    row = (b * offset_groups + og) * taps + tap
    dy = tl.load(offset + (2 * row) * L + offs_l, mask=mask_l, other=0.0).to(ACC)
    dx = tl.load(offset + (2 * row + 1) * L + offs_l, mask=mask_l, other=0.0).to(ACC)
    ho = offs_l // W_out
    wo = offs_l % W_out
    i = tap // kw
    j = tap % kw
    y = (ho * stride_h - pad_h + i * dil_h).to(dy.dtype) + dy
    x = (wo * stride_w - pad_w + j * dil_w).to(dx.dtype) + dx
    if HAS_MASK:
        m = tl.load(mask + row * L + offs_l, mask=mask_l, other=0.0).to(ACC)
    else:
        m = tl.full(dy.shape, 1.0, dy.dtype)
    return y, x, m


@triton.jit
def _corners(y, x, H, W):
    """Top-left neighbour (y0, x0), fractions (fy, fx), whether the sample is inside (y, x in (-1, H) x (-1, W))
    and whether its position is finite (else its column is NaN: the NaN rule of fastseg.ops)."""
    inside = (y > -1.0) & (y < H) & (x > -1.0) & (x < W)
    finite = ((y - y) == 0.0) & ((x - x) == 0.0)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    fy = tl.where(inside, y - y0f, 0.0)
    fx = tl.where(inside, x - x0f, 0.0)
    y0 = tl.where(inside, y0f, -2.0).to(tl.int32)
    x0 = tl.where(inside, x0f, -2.0).to(tl.int32)
    return y0, x0, fy, fx, inside, finite


@triton.jit
def _neighbour(image, y0, x0, dy: tl.constexpr, dx: tl.constexpr, H, W, mask_c):
    """Values of neighbour (y0 + dy, x0 + dx) for the tile's channels: (BM, BK), zero outside the image."""
    r = y0 + dy
    c = x0 + dx
    ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    return tl.load(image[None, :] + (r * W + c)[:, None], mask=ok[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _gather(input, channel_base, y0, x0, H, W, mask_c, ACC: tl.constexpr):
    """The four neighbours (BM, BK) in the accumulation dtype; channel_base (BK,) points at each channel plane."""
    image = input + channel_base
    v00 = _neighbour(image, y0, x0, 0, 0, H, W, mask_c).to(ACC)
    v01 = _neighbour(image, y0, x0, 0, 1, H, W, mask_c).to(ACC)
    v10 = _neighbour(image, y0, x0, 1, 0, H, W, mask_c).to(ACC)
    v11 = _neighbour(image, y0, x0, 1, 1, H, W, mask_c).to(ACC)
    return v00, v01, v10, v11


@triton.jit
def _bilinear(v00, v01, v10, v11, fy, fx):
    wy = fy[:, None]
    wx = fx[:, None]
    return (1 - wy) * ((1 - wx) * v00 + wx * v01) + wy * ((1 - wx) * v10 + wx * v11)


@triton.jit
def _column_tile(v00, v01, v10, v11, fy, fx, m, finite):
    """Modulated bilinear samples (BM, BK); NaN where the sample position is not finite."""
    return tl.where(finite[:, None], _bilinear(v00, v01, v10, v11, fy, fx) * m[:, None], float("nan"))


@triton.jit
def _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, grad, H, W, mask_c, DY: tl.constexpr, DX: tl.constexpr):
    """grad_input[neighbour (y0 + DY, x0 + DX)] += its bilinear weight * grad, for a (BM, BK) tile (atomics)."""
    r = y0 + DY
    c = x0 + DX
    weight = (fy * DY + (1 - fy) * (1 - DY)) * (fx * DX + (1 - fx) * (1 - DX))
    ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    tl.atomic_add(grad_input + channel_base[None, :] + (r * W + c)[:, None], grad * weight[:, None],
                  mask=ok[:, None] & mask_c[None, :])


@triton.jit
def _forward_kernel(
    input, offset, mask, weight, bias, output,
    C, H, W, L, W_out, C_out, kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    offset_groups, group_channels, group_out, offset_group_channels, segment,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n_blocks = tl.cdiv(group_out, BLOCK_N)
    group = tl.program_id(1) // n_blocks
    offs_n = (tl.program_id(1) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    b = tl.program_id(2).to(tl.int64)
    offs_l = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_l = offs_l < L
    mask_n = offs_n < group_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for tap in range(taps):
        for s0 in range(0, group_channels, segment):
            c_start = group * group_channels + s0
            og = c_start // offset_group_channels
            y, x, m = _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w,
                                       pad_h, pad_w, dil_h, dil_w, taps, offset_groups, HAS_MASK, ACC)
            y0, x0, fy, fx, inside, finite = _corners(y, x, H, W)
            for k0 in range(0, segment, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_c = offs_k < segment
                channel_base = ((b * C + c_start + offs_k) * H).to(tl.int64) * W
                v00, v01, v10, v11 = _gather(input, channel_base, y0, x0, H, W, mask_c, ACC)
                tile = _column_tile(v00, v01, v10, v11, fy, fx, m, finite)
                local_c = s0 + offs_k
                w_tile = tl.load(weight + ((group * group_out + offs_n[None, :]) * group_channels + local_c[:, None]) * taps
                                 + tap, mask=mask_c[:, None] & mask_n[None, :], other=0.0)
                acc += tl.dot(tile.to(DOT), w_tile.to(DOT), input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias + group * group_out + offs_n, mask=mask_n, other=0.0).to(ACC)[None, :]
    out = output + (b * C_out + group * group_out + offs_n[None, :]).to(tl.int64) * L + offs_l[:, None]
    tl.store(out, acc.to(output.dtype.element_ty), mask=mask_l[:, None] & mask_n[None, :])


@triton.jit
def _backward_tile(group_channels, segment, taps, BLOCK_K: tl.constexpr):
    """Program id 1 of a backward kernel -> (first channel k0 in the segment, segment start s0, tap, group)."""
    k_blocks = tl.cdiv(segment, BLOCK_K)
    segments = group_channels // segment
    pid = tl.program_id(1)
    k0 = (pid % k_blocks) * BLOCK_K
    s0 = ((pid // k_blocks) % segments) * segment
    tap = (pid // (k_blocks * segments)) % taps
    group = pid // (k_blocks * segments * taps)
    return k0, s0, tap, group


@triton.jit
def _backward_data_kernel(
    grad_output, input, offset, mask, weight, grad_input, grad_offset, grad_mask,
    C, H, W, L, W_out, C_out, kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    offset_groups, group_channels, group_out, offset_group_channels, segment,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_columns tile (BM pixels, BK channels of one segment, one tap) -> grad_input, grad_offset, grad_mask."""
    k0, s0, tap, group = _backward_tile(group_channels, segment, taps, BLOCK_K)
    b = tl.program_id(2).to(tl.int64)
    offs_l = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_l = offs_l < L
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_c = offs_k < segment
    local_c = s0 + offs_k
    c_start = group * group_channels + s0
    og = c_start // offset_group_channels

    grad_col = tl.zeros([BLOCK_M, BLOCK_K], dtype=ACC)
    for n0 in range(0, group_out, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < group_out
        g_tile = tl.load(grad_output + (b * C_out + group * group_out + offs_n[None, :]).to(tl.int64) * L + offs_l[:, None],
                         mask=mask_l[:, None] & mask_n[None, :], other=0.0)
        w_tile = tl.load(weight + ((group * group_out + offs_n[:, None]) * group_channels + local_c[None, :]) * taps + tap,
                         mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        grad_col += tl.dot(g_tile.to(DOT), w_tile.to(DOT), input_precision=PRECISION, out_dtype=ACC)

    y, x, m = _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w,
                               pad_h, pad_w, dil_h, dil_w, taps, offset_groups, HAS_MASK, ACC)
    y0, x0, fy, fx, inside, finite = _corners(y, x, H, W)
    channel_base = ((b * C + c_start + offs_k) * H).to(tl.int64) * W
    # grad_input: col2im scatter of mask * bilinear weight * grad_columns
    scaled = grad_col * m[:, None]
    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 0, 0)
    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 0, 1)
    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 1, 0)
    _scatter_corner(grad_input, channel_base, y0, x0, fy, fx, scaled, H, W, mask_c, 1, 1)
    # grad_offset / grad_mask: the sampling derivative, summed over this block's channels
    v00, v01, v10, v11 = _gather(input, channel_base, y0, x0, H, W, mask_c, ACC)
    value = _bilinear(v00, v01, v10, v11, fy, fx)
    d_y = (1 - fx)[:, None] * (v10 - v00) + fx[:, None] * (v11 - v01)
    d_x = (1 - fy)[:, None] * (v01 - v00) + fy[:, None] * (v11 - v10)
    row = (b * offset_groups + og) * taps + tap
    # a sample with no neighbour inside has zero offset gradient, whatever its mask (as the reference)
    tl.atomic_add(grad_offset + (2 * row) * L + offs_l, tl.where(inside, m * tl.sum(grad_col * d_y, axis=1), 0.0),
                  mask=mask_l)
    tl.atomic_add(grad_offset + (2 * row + 1) * L + offs_l, tl.where(inside, m * tl.sum(grad_col * d_x, axis=1), 0.0),
                  mask=mask_l)
    if HAS_MASK:
        tl.atomic_add(grad_mask + row * L + offs_l, tl.sum(grad_col * value, axis=1), mask=mask_l)


@triton.jit
def _backward_weight_kernel(
    grad_output, input, offset, mask, partial_weight,
    B, C, H, W, L, W_out, C_out, kw, taps, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    offset_groups, group_channels, group_out, offset_group_channels, segment, items_per_split,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """partial_weight[split, n, c*taps + tap] = sum over this split's (image, pixel block) of grad_out^T @ samples."""
    k0, s0, tap, group = _backward_tile(group_channels, segment, taps, BLOCK_K)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < group_out
    split = tl.program_id(2)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_c = offs_k < segment
    c_start = group * group_channels + s0
    og = c_start // offset_group_channels
    l_blocks = tl.cdiv(L, BLOCK_M)
    start = split * items_per_split
    end = tl.minimum(start + items_per_split, B * l_blocks)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    for item in range(start, end):
        b = item // l_blocks
        offs_l = (item % l_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_l = offs_l < L
        y, x, m = _sample_position(offset, mask, b, og, tap, offs_l, mask_l, L, W_out, kw, stride_h, stride_w,
                                   pad_h, pad_w, dil_h, dil_w, taps, offset_groups, HAS_MASK, ACC)
        y0, x0, fy, fx, inside, finite = _corners(y, x, H, W)
        channel_base = ((b * C + c_start + offs_k) * H).to(tl.int64) * W
        v00, v01, v10, v11 = _gather(input, channel_base, y0, x0, H, W, mask_c, ACC)
        tile = _column_tile(v00, v01, v10, v11, fy, fx, m, finite)
        g_tile = tl.load(grad_output + (b * C_out + group * group_out + offs_n[:, None]).to(tl.int64) * L + offs_l[None, :],
                         mask=mask_n[:, None] & mask_l[None, :], other=0.0)
        acc += tl.dot(g_tile.to(DOT), tile.to(DOT), input_precision=PRECISION, out_dtype=ACC)
    local_c = s0 + offs_k
    out = partial_weight + (split * C_out + group * group_out + offs_n[:, None]) * (group_channels * taps) \
        + local_c[None, :] * taps + tap
    tl.store(out, acc, mask=mask_n[:, None] & mask_c[None, :])


def _geometry(input, offset, weight, stride, padding, dilation) -> dict:
    """Integer launch arguments shared by the kernels."""
    batch, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    taps = kh * kw
    groups = channels // group_channels
    offset_groups = offset.shape[1] // (2 * taps)
    offset_group_channels = channels // offset_groups
    return dict(
        C=channels, H=height, W=width, L=offset.shape[2] * offset.shape[3], W_out=offset.shape[3], C_out=out_channels,
        kw=kw, taps=taps, stride_h=stride[0], stride_w=stride[1], pad_h=padding[0], pad_w=padding[1],
        dil_h=dilation[0], dil_w=dilation[1], offset_groups=offset_groups, group_channels=group_channels,
        group_out=out_channels // groups, offset_group_channels=offset_group_channels,
        segment=math.gcd(group_channels, offset_group_channels),
    )


def _dtypes(dtype: torch.dtype, device: torch.device) -> dict:
    """Accumulation dtype, and the dtype of the dot operands (native fp16/bf16 on GPU, else fp32/fp64)."""
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return dict(ACC=acc, DOT=tl.float16 if dtype == torch.float16 else tl.bfloat16, PRECISION=None)
    return dict(ACC=acc, DOT=acc, PRECISION="ieee")


def _blocks(segment: int, group_out: int) -> dict:
    block_k = min(32, max(16, triton.next_power_of_2(segment)))
    block_n = min(64, max(16, triton.next_power_of_2(group_out)))
    return dict(BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=block_k)


def forward(input, offset, weight, mask, bias, stride, padding, dilation) -> torch.Tensor:
    """(B, C_out, Ho, Wo); see fastseg.ops.deform_conv2d for the shapes."""
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    mask = mask.contiguous() if mask is not None else None
    bias = bias.contiguous() if bias is not None else None  # the kernel indexes it densely
    geo = _geometry(input, offset, weight, stride, padding, dilation)
    batch = input.shape[0]
    groups = geo["C"] // geo["group_channels"]
    output = torch.empty(batch, geo["C_out"], offset.shape[2], offset.shape[3], device=input.device, dtype=input.dtype)
    blocks = _blocks(geo["segment"], geo["group_out"])
    grid = (triton.cdiv(geo["L"], blocks["BLOCK_M"]), groups * triton.cdiv(geo["group_out"], blocks["BLOCK_N"]), batch)
    _forward_kernel[grid](
        input, offset, mask if mask is not None else offset, weight, bias if bias is not None else weight, output,
        **geo, HAS_MASK=mask is not None, HAS_BIAS=bias is not None, **_dtypes(input.dtype, input.device), **blocks,
    )
    return output


def _refuse_nondeterminism() -> None:
    if torch.are_deterministic_algorithms_enabled():
        message = ("fastseg deform_conv2d backward with backend='triton' scatters grad_input with atomics and has no "
                   "deterministic implementation; use backend='cpu' or backend='reference'")
        if torch.is_deterministic_algorithms_warn_only_enabled():
            warnings.warn(message, stacklevel=3)
        else:
            raise RuntimeError(message)


def _num_splits(device: torch.device, programs: int, items: int) -> int:
    """(image, pixel block) slices of the weight-gradient reduction: about four programs per SM on a GPU."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(items, triton.cdiv(4 * sms, programs)))


def backward(grad_output, input, offset, weight, mask, stride, padding, dilation):
    """(grad_input, grad_offset, grad_weight, grad_mask or an empty tensor, grad_bias)."""
    _refuse_nondeterminism()
    grad_output = grad_output.contiguous()
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    mask = mask.contiguous() if mask is not None else None
    geo = _geometry(input, offset, weight, stride, padding, dilation)
    batch = input.shape[0]
    groups = geo["C"] // geo["group_channels"]
    dtypes = _dtypes(input.dtype, input.device)
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    blocks = _blocks(geo["segment"], geo["group_out"])
    column_programs = groups * geo["taps"] * (geo["group_channels"] // geo["segment"]) * triton.cdiv(
        geo["segment"], blocks["BLOCK_K"])
    grad_input = torch.zeros(input.shape, device=input.device, dtype=acc_dtype)
    grad_offset = torch.zeros(offset.shape, device=input.device, dtype=acc_dtype)
    grad_mask = torch.zeros(mask.shape if mask is not None else (0,), device=input.device, dtype=acc_dtype)
    has_mask = mask is not None
    mask_arg = mask if has_mask else offset
    _backward_data_kernel[(triton.cdiv(geo["L"], blocks["BLOCK_M"]), column_programs, batch)](
        grad_output, input, offset, mask_arg, weight, grad_input, grad_offset, grad_mask if has_mask else grad_offset,
        **geo, HAS_MASK=has_mask, **dtypes, **blocks,
    )
    items = batch * triton.cdiv(geo["L"], blocks["BLOCK_M"])
    n_programs = triton.cdiv(geo["group_out"], blocks["BLOCK_N"])
    splits = _num_splits(input.device, n_programs * column_programs, items)
    items_per_split = triton.cdiv(items, splits)
    splits = triton.cdiv(items, items_per_split)
    partial_weight = torch.empty(splits, *weight.shape, device=input.device, dtype=acc_dtype)
    _backward_weight_kernel[(n_programs, column_programs, splits)](
        grad_output, input, offset, mask_arg, partial_weight, batch, **geo, items_per_split=items_per_split,
        HAS_MASK=has_mask, **dtypes, **blocks,
    )
    grad_weight = partial_weight.sum(dim=0)
    grad_bias = grad_output.sum(dim=(0, 2, 3), dtype=acc_dtype)
    dtype = input.dtype
    return (grad_input.to(dtype), grad_offset.to(dtype), grad_weight.to(dtype), grad_mask.to(dtype),
            grad_bias.to(dtype))
