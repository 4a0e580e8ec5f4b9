"""Triton kernels of flow_warp (DecoupleSegNet Eq. 1).

Forward: a program owns (block of output pixels, block of channels, image); it computes the four
corners and weights of its pixels once and gathers every channel of its block through them.
Backward: a program owns (block of output pixels, image) and walks all channels, so grad_flow (a
sum over channels) is reduced in registers and stored without atomics. grad_input is a bilinear
splat, added with ``tl.atomic_add`` into an fp32 (fp64 for fp64) buffer: the order of those adds is
not fixed on a GPU, so under ``torch.use_deterministic_algorithms(True)`` the CUDA backward raises
(or warns, with ``warn_only=True``) and points to the deterministic C++ kernels.
"""
from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl


@triton.jit
def _axis_corners(index, flow, in_size, out_size, ALIGN: tl.constexpr, BORDER: tl.constexpr):
    """Corners along one axis (as csrc/flow_warp_sampling.h): indices (0 outside), weights, d(weight)/d(flow),
    which corners are inside (only those are read) and whether the flow is finite."""
    dtype = flow.dtype
    finite = (flow - flow) == 0.0
    position = index.to(dtype)
    slope = tl.full(flow.shape, 1.0, dtype)
    if ALIGN:
        scale = tl.where(out_size > 1, (in_size - 1).to(dtype) / tl.maximum(out_size - 1, 1).to(dtype), 0.0)
        coord = position * scale + flow
        collapsed = in_size == 1  # grid_sample samples a size-1 axis at 0, with zero gradient
        coord = tl.where(collapsed, 0.0, coord)
        slope = tl.where(collapsed, 0.0, slope)
    else:
        scale = in_size.to(dtype) / out_size.to(dtype)
        coord = position * scale + (0.5 * scale - 0.5) + flow
    last = (in_size - 1).to(dtype)
    if BORDER:  # clipped coordinates have zero gradient, as in grid_sample
        slope = tl.where((coord < 0.0) | (coord > last), 0.0, slope)
        coord = tl.where(coord < 0.0, 0.0, tl.where(coord > last, last, coord))
    coord = tl.where(coord > -2.0, coord, -2.0)
    coord = tl.where(coord < last + 2.0, coord, last + 2.0)
    low = tl.floor(coord)
    t = coord - low
    inside0 = finite & (low >= 0.0) & (low <= last)
    inside1 = finite & (low + 1.0 >= 0.0) & (low + 1.0 <= last)
    index0 = tl.where(inside0, low, 0.0).to(tl.int64)
    index1 = tl.where(inside1, low + 1.0, 0.0).to(tl.int64)
    weight0 = tl.where(inside0, 1.0 - t, 0.0)
    weight1 = tl.where(inside1, t, 0.0)
    grad0 = tl.where(inside0, -slope, 0.0)
    grad1 = tl.where(inside1, slope, 0.0)
    return index0, index1, weight0, weight1, grad0, grad1, inside0, inside1, finite


@triton.jit
def _pixel_corners(flow, b, offs_p, in_h, in_w, out_h, out_w, ALIGN: tl.constexpr, BORDER: tl.constexpr):
    """Flow of output pixels ``offs_p`` of image ``b`` -> the corners along x and y."""
    out_pixels = out_h * out_w
    mask_p = offs_p < out_pixels
    flow_x = tl.load(flow + b * 2 * out_pixels + offs_p, mask=mask_p, other=0.0)
    flow_y = tl.load(flow + (b * 2 + 1) * out_pixels + offs_p, mask=mask_p, other=0.0)
    x = _axis_corners(offs_p % out_w, flow_x, in_w, out_w, ALIGN, BORDER)
    y = _axis_corners(offs_p // out_w, flow_y, in_h, out_h, ALIGN, BORDER)
    return x, y


# Sizes are never specialised to constants (Triton does that for 1), so they stay integer tensors.
_SIZES = ["C", "in_h", "in_w", "out_h", "out_w"]


@triton.jit(do_not_specialize=_SIZES)
def _forward_kernel(
    input, flow, output, C, in_h, in_w, out_h, out_w,
    ALIGN: tl.constexpr, BORDER: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    x, y = _pixel_corners(flow, b, offs_p, in_h, in_w, out_h, out_w, ALIGN, BORDER)
    mask = (offs_c[:, None] < C) & (offs_p[None, :] < out_h * out_w)
    planes = input + (b * C + offs_c[:, None]) * (in_h * in_w)
    value = tl.zeros([BLOCK_C, BLOCK_P], dtype=flow.dtype.element_ty)
    for j in tl.static_range(2):
        for i in tl.static_range(2):
            weight = y[2 + j] * x[2 + i]
            offset = y[j] * in_w + x[i]
            inside = y[6 + j] & x[6 + i]
            corner = tl.load(planes + offset[None, :], mask=mask & inside[None, :], other=0.0)
            value += weight[None, :] * corner.to(value.dtype)  # Eq. 1
    value = tl.where((x[8] & y[8])[None, :], value, float("nan"))  # a non-finite flow gives NaN
    out = output + (b * C + offs_c[:, None]) * (out_h * out_w) + offs_p[None, :]
    tl.store(out, value.to(output.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_SIZES)
def _backward_kernel(
    grad_output, input, flow, grad_input, grad_flow, C, in_h, in_w, out_h, out_w,
    ALIGN: tl.constexpr, BORDER: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    out_pixels = out_h * out_w
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < out_pixels
    x, y = _pixel_corners(flow, b, offs_p, in_h, in_w, out_h, out_w, ALIGN, BORDER)
    acc_dtype = flow.dtype.element_ty
    sum_x = tl.zeros([BLOCK_P], dtype=acc_dtype)
    sum_y = tl.zeros([BLOCK_P], dtype=acc_dtype)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask = (offs_c[:, None] < C) & mask_p[None, :]
        rows = (b * C + offs_c[:, None]) * (in_h * in_w)
        go = tl.load(grad_output + (b * C + offs_c[:, None]) * out_pixels + offs_p[None, :], mask=mask, other=0.0)
        go = go.to(acc_dtype)
        for j in tl.static_range(2):
            for i in tl.static_range(2):
                weight = y[2 + j] * x[2 + i]
                offset = rows + (y[j] * in_w + x[i])[None, :]
                read = mask & (y[6 + j] & x[6 + i])[None, :]
                corner = tl.load(input + offset, mask=read, other=0.0).to(acc_dtype)
                # Eq. 1 transposed: splat go * weight onto the corner
                tl.atomic_add(grad_input + offset, go * weight[None, :], mask=read & (weight[None, :] != 0.0),
                              sem="relaxed")
                projected = tl.sum(go * corner, axis=0)
                sum_x += y[2 + j] * x[4 + i] * projected
                sum_y += y[4 + j] * x[2 + i] * projected
    tl.store(grad_flow + b * 2 * out_pixels + offs_p, sum_x, mask=mask_p)
    tl.store(grad_flow + (b * 2 + 1) * out_pixels + offs_p, sum_y, mask=mask_p)


_BLOCK_C, _BLOCK_P = 32, 64
# The backward's four unrolled corners keep int64 offsets, masks and values of its tile live: sm_90, 4 warps,
# Triton 3.9: BLOCK_C=32 took 190-255 registers (92 B spilled for zeros, no align); BLOCK_C=16 144-152, no spill,
# its loop 3.2-3.4 instead of 3.65-3.8 (spills included) warp instructions per channel-pixel. Triton 3.6 (PyTorch
# 2.11's) spills 200-296 B at BLOCK_C=16; BLOCK_C=8 is spill-free in both (191-221 registers in 3.6, 80-88 in 3.9;
# its loop's instructions not recounted).
_BACKWARD_BLOCK_C = 8


def forward(input: torch.Tensor, flow: torch.Tensor, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """output (B,C,Ho,Wo) in input's dtype; flow (B,2,Ho,Wo) fp32 (fp64 for fp64 input), in input pixels."""
    input = input.contiguous()
    flow = flow.contiguous()
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = flow.shape[2:]
    output = torch.empty(batch, channels, out_h, out_w, device=input.device, dtype=input.dtype)
    if output.numel():
        grid = (triton.cdiv(out_h * out_w, _BLOCK_P), triton.cdiv(channels, _BLOCK_C), batch)
        _forward_kernel[grid](
            input, flow, output, channels, in_h, in_w, out_h, out_w,
            ALIGN=align_corners, BORDER=padding_mode == "border", BLOCK_C=_BLOCK_C, BLOCK_P=_BLOCK_P,
        )
    return output


def _check_deterministic(device: torch.device) -> None:
    """Atomic float adds are unordered on a GPU: refuse (or warn) under deterministic algorithms."""
    if device.type != "cuda" or not torch.are_deterministic_algorithms_enabled():
        return
    message = ("flow_warp backward with backend='triton' splats grad_input with atomic adds and is not "
               "deterministic; use backend='cpu' (deterministic) or leave torch.use_deterministic_algorithms off")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)


def backward(
    grad_output: torch.Tensor, input: torch.Tensor, flow: torch.Tensor, padding_mode: str, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_input (B,C,Hi,Wi) in input's dtype and grad_flow (B,2,Ho,Wo) in flow's dtype."""
    _check_deterministic(input.device)
    grad_output = grad_output.contiguous()
    input = input.contiguous()
    flow = flow.contiguous()
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = flow.shape[2:]
    grad_input = torch.zeros(input.shape, device=input.device, dtype=flow.dtype)
    grad_flow = torch.empty_like(flow)  # stored whole by the kernel (empty when it does not run)
    if batch * out_h * out_w:
        grid = (triton.cdiv(out_h * out_w, _BLOCK_P), batch)
        _backward_kernel[grid](
            grad_output, input, flow, grad_input, grad_flow, channels, in_h, in_w, out_h, out_w,
            ALIGN=align_corners, BORDER=padding_mode == "border", BLOCK_C=_BACKWARD_BLOCK_C, BLOCK_P=_BLOCK_P,
        )
    return grad_input.to(input.dtype), grad_flow
