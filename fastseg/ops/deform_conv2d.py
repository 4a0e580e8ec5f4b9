"""Deformable convolution v1 and v2 (CSFRNet AAM, Eq. 6; Dai et al. 2017, Zhu et al. 2019).

Same signature, layouts and semantics as ``torchvision.ops.deform_conv2d``: for output pixel
(ho, wo) and kernel tap (i, j) of offset group g, the input is sampled bilinearly at

    y = ho * stride_h - pad_h + i * dil_h + offset[b, 2 * (g*kh*kw + i*kw + j)]
    x = wo * stride_w - pad_w + j * dil_w + offset[b, 2 * (g*kh*kw + i*kw + j) + 1]

where each of the four neighbours outside [0, H) x [0, W) contributes zero (a sample with y <= -1,
y >= H, x <= -1 or x >= W is zero), multiplied by ``mask[b, g*kh*kw + i*kw + j]`` (v2, modulated),
and the sampled columns are contracted with the weights like a grouped convolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from fastseg.ops.checks import check_float, check_same_device, check_same_dtype
from fastseg.ops.library import FusedOp, OpPair


def output_size(height: int, width: int, kernel: tuple[int, int], stride, padding, dilation) -> tuple[int, int]:
    """(Ho, Wo) of a convolution with these hyper-parameters, as F.conv2d computes it."""
    return tuple(
        (size + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
        for d, size in enumerate((height, width))
    )


def _sample(input: Tensor, offset: Tensor, mask: Tensor | None, kernel, stride, padding, dilation) -> Tensor:
    """Bilinear samples of every kernel tap: (B, C_in, kh*kw, Ho, Wo), mask applied.

    Uses F.grid_sample with zero padding and align_corners=False, for which pixel coordinate p maps
    to the normalised coordinate (2p + 1) / size - 1.
    """
    batch, channels, height, width = input.shape
    kh, kw = kernel
    taps = kh * kw
    out_h, out_w = offset.shape[-2:]
    offset_groups = offset.shape[1] // (2 * taps)
    dtype, device = offset.dtype, offset.device
    tap_y = (torch.arange(kh, device=device, dtype=dtype) * dilation[0]).repeat_interleave(kw)  # (taps,)
    tap_x = (torch.arange(kw, device=device, dtype=dtype) * dilation[1]).repeat(kh)
    base_y = torch.arange(out_h, device=device, dtype=dtype) * stride[0] - padding[0]
    base_x = torch.arange(out_w, device=device, dtype=dtype) * stride[1] - padding[1]
    delta = offset.reshape(batch, offset_groups, taps, 2, out_h, out_w)
    y = base_y.view(1, 1, 1, -1, 1) + tap_y.view(1, 1, -1, 1, 1) + delta[:, :, :, 0]  # (B, G, taps, Ho, Wo)
    x = base_x.view(1, 1, 1, 1, -1) + tap_x.view(1, 1, -1, 1, 1) + delta[:, :, :, 1]
    # NaN rule (fastseg.ops): a non-finite offset gives a NaN sample that sends no gradient; grid_sample
    # only sees finite coordinates within a pixel of the image (no corner inside beyond: same samples)
    bad = ~(torch.isfinite(y) & torch.isfinite(x))
    y = y.masked_fill(bad, -2).clamp(-2, height + 1)
    x = x.masked_fill(bad, -2).clamp(-2, width + 1)
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    grid = grid.view(batch * offset_groups, taps * out_h, out_w, 2)
    images = input.reshape(batch * offset_groups, channels // offset_groups, height, width)
    samples = F.grid_sample(images, grid.to(input.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.view(batch, offset_groups, channels // offset_groups, taps, out_h, out_w)
    if mask is not None:
        samples = samples * mask.reshape(batch, offset_groups, 1, taps, out_h, out_w)
    samples = samples.masked_fill(bad.view(batch, offset_groups, 1, taps, out_h, out_w), float("nan"))
    return samples.reshape(batch, channels, taps, out_h, out_w)


def deform_conv2d_reference(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: Tensor | None = None,
) -> Tensor:
    """Plain-PyTorch deformable convolution: grid_sample the taps, then one grouped matmul.

    Shapes: input (B, C_in, H, W), offset (B, 2*G*kh*kw, Ho, Wo), weight (C_out, C_in/groups, kh, kw),
    bias (C_out,), mask (B, G*kh*kw, Ho, Wo) -> (B, C_out, Ho, Wo).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    out_channels, group_channels, kh, kw = weight.shape
    batch, channels = input.shape[:2]
    groups = channels // group_channels
    samples = _sample(input, offset, mask, (kh, kw), stride, padding, dilation)  # (B, C_in, taps, Ho, Wo)
    out_h, out_w = samples.shape[-2:]
    columns = samples.view(batch, groups, group_channels * kh * kw, out_h * out_w)
    kernels = weight.reshape(groups, out_channels // groups, group_channels * kh * kw)
    out = torch.matmul(kernels, columns).view(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _forward_triton(
    input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, bias: Tensor | None,
    stride: list[int], padding: list[int], dilation: list[int],
) -> Tensor:
    from fastseg.kernels import deform_conv2d as kernels

    return kernels.forward(input, offset, weight, mask, bias, stride, padding, dilation)


def _backward_triton(
    grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
    stride: list[int], padding: list[int], dilation: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from fastseg.kernels import deform_conv2d as kernels

    return kernels.backward(grad_output, input, offset, weight, mask, stride, padding, dilation)


def _fake_forward(input, offset, weight, mask, bias, stride, padding, dilation):
    return input.new_empty(input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


def _fake_backward(grad_output, input, offset, weight, mask, stride, padding, dilation):
    grad_mask = torch.empty_like(mask) if mask is not None else input.new_empty(0)
    return (torch.empty_like(input), torch.empty_like(offset), torch.empty_like(weight), grad_mask,
            weight.new_empty(weight.shape[0]))


def _setup_context(ctx, inputs, output):
    input, offset, weight, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.has_bias = bias is not None
    ctx.hyper = (stride, padding, dilation)


def _autograd_backward(pair: OpPair):
    def backward(ctx, grad_output):
        input, offset, weight, mask = ctx.saved_tensors
        grad_input, grad_offset, grad_weight, grad_mask, grad_bias = pair.backward(
            grad_output.contiguous(), input, offset, weight, mask, *ctx.hyper
        )
        return (grad_input, grad_offset, grad_weight, grad_mask if mask is not None else None,
                grad_bias if ctx.has_bias else None, None, None, None)

    return backward


def _fused_arguments(input, offset, weight, bias, stride, padding, dilation, mask):
    """The fused ops' argument order (mask before bias, lists for the schema's int[2])."""
    return input, offset, weight, mask, bias, list(stride), list(padding), list(dilation)


DEFORM_CONV2D = FusedOp("deform_conv2d", deform_conv2d_reference, _forward_triton, _backward_triton, _fake_forward,
                        _fake_backward, _setup_context, _autograd_backward, fused_arguments=_fused_arguments,
                        autocast="lower")


def _check_pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and minimum <= v < 2**31 for v in pair
    ):
        raise ValueError(f"{name} must be an int or a pair of ints in [{minimum}, 2**31), got {value!r}")
    return tuple(pair)


def _validate(input, offset, weight, bias, stride, padding, dilation, mask):
    check_float(input, "input", 4)
    check_float(offset, "offset", 4)
    check_float(weight, "weight", 4)
    tensors = {"input": input, "offset": offset, "weight": weight}
    if bias is not None:
        check_float(bias, "bias", 1)
        tensors["bias"] = bias
    if mask is not None:
        check_float(mask, "mask", 4)
        tensors["mask"] = mask
    check_same_device(**tensors)
    check_same_dtype(DEFORM_CONV2D.autocast, **tensors)
    stride = _check_pair(stride, "stride", 1)
    padding = _check_pair(padding, "padding", 0)
    dilation = _check_pair(dilation, "dilation", 1)
    batch, channels, height, width = input.shape
    if height == 0 or width == 0:
        raise ValueError(f"input must have a non-empty spatial size, got shape {tuple(input.shape)}")
    out_channels, group_channels, kh, kw = weight.shape
    taps = kh * kw
    if channels == 0 or group_channels == 0 or channels % group_channels:
        raise ValueError(f"weight shape {tuple(weight.shape)}: in_channels={channels} is not a multiple of weight.shape[1]")
    groups = channels // group_channels
    if out_channels % groups:
        raise ValueError(f"weight shape {tuple(weight.shape)}: out_channels is not a multiple of groups={groups}")
    if taps == 0:
        raise ValueError(f"weight has an empty kernel, shape {tuple(weight.shape)}")
    if offset.shape[1] == 0 or offset.shape[1] % (2 * taps):
        raise ValueError(f"offset has {offset.shape[1]} channels, expected a positive multiple of 2*kh*kw={2 * taps}")
    offset_groups = offset.shape[1] // (2 * taps)
    if channels % offset_groups:
        raise ValueError(f"offset: in_channels={channels} is not a multiple of offset_groups={offset_groups}")
    out_size = output_size(height, width, (kh, kw), stride, padding, dilation)
    if min(out_size) <= 0:
        raise ValueError(f"input of size {(height, width)} is too small for the kernel: output size {out_size}")
    if offset.shape[0] != batch or tuple(offset.shape[2:]) != out_size:
        raise ValueError(f"offset shape {tuple(offset.shape)}, expected ({batch}, {2 * offset_groups * taps}, "
                         f"{out_size[0]}, {out_size[1]})")
    if mask is not None and tuple(mask.shape) != (batch, offset_groups * taps, *out_size):
        raise ValueError(f"mask shape {tuple(mask.shape)}, expected ({batch}, {offset_groups * taps}, "
                         f"{out_size[0]}, {out_size[1]})")
    if bias is not None and bias.shape[0] != out_channels:
        raise ValueError(f"bias has {bias.shape[0]} elements, expected out_channels={out_channels}")
    return stride, padding, dilation


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Deformable convolution (v1; v2 when ``mask`` is given), a drop-in for torchvision's.

    Args:
        input: (B, C_in, H, W).
        offset: (B, 2*G*kh*kw, Ho, Wo), (dy, dx) pairs in pixels per kernel tap, taps row-major;
            G = offset_groups, inferred from the shape.
        weight: (C_out, C_in/groups, kh, kw); groups = C_in / weight.shape[1].
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w).
        mask: (B, G*kh*kw, Ho, Wo) modulation of each sample, or None.
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        (B, C_out, Ho, Wo), differentiable w.r.t. input, offset, weight, bias and mask.
    """
    stride, padding, dilation = _validate(input, offset, weight, bias, stride, padding, dilation, mask)
    return DEFORM_CONV2D(input.device, backend, input, offset, weight, bias, stride, padding, dilation, mask)


class DeformConv2d(nn.Module):
    """Deformable convolution v1 with its weights; offsets (and an optional mask) come from the caller.

    ``forward(input, offset, mask=None)`` with the shapes of :func:`deform_conv2d`, G = offset_groups.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, offset_groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be multiples of groups={groups}")
        if in_channels % offset_groups:
            raise ValueError(f"in_channels={in_channels} must be a multiple of offset_groups={offset_groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.offset_groups = groups, offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and uniform bias, as nn.Conv2d."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_groups}, bias={self.bias is not None}")


class ModulatedDeformConv2d(DeformConv2d):
    """Deformable convolution v2 that predicts its own offsets and mask from ``guide`` (default: input).

    A conv with the same kernel, stride, padding and dilation maps the guide to 3*G*kh*kw channels:
    offsets (the first 2*G*kh*kw) and mask logits (mask = 2*sigmoid, 1 at initialisation). It is
    initialised to zero, so training starts as a plain convolution. CSFRNet's AAM (Eq. 6) feeds the
    concatenated C-S and backbone features as the guide.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, offset_groups: int = 1, bias: bool = True, guide_channels: int | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         offset_groups, bias)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_conv = nn.Conv2d(guide_channels or in_channels, 3 * offset_groups * taps, self.kernel_size,
                                     self.stride, self.padding, self.dilation)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, input: Tensor, guide: Tensor | None = None) -> Tensor:
        prediction = self.offset_conv(input if guide is None else guide)
        split = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, logits = prediction[:, :split], prediction[:, split:]
        return super().forward(input, offset, 2 * torch.sigmoid(logits))
