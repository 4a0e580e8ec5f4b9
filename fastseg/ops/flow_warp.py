"""Flow warping: bilinear sampling of a feature map at p + flow(p) (DecoupleSegNet Eq. 1).

``output[b, :, y, x]`` is the bilinear sample of ``input[b]`` at ``base(x, y) + flow[b, :, y, x]``,
flow channel 0 = dx and 1 = dy in input pixels, where ``base`` maps the output grid onto the input
with ``align_corners`` semantics (the identity for equal sizes; with align_corners=True
``base_x = x * (Wi - 1) / (Wo - 1)``, with False ``base_x = (x + 0.5) * Wi / Wo - 0.5``). This is
``F.grid_sample(input, grid, mode="bilinear")`` with the corresponding normalised grid, values and
gradients included. DecoupleSegNet warps the ASPP features with it (body generation); SFNet-style
alignment warps a coarse map while upsampling it (Ho, Wo larger than Hi, Wi).

The backward w.r.t. input is a bilinear splat. Determinism: the C++ CPU kernels always are (each
thread owns its channels' planes); the CUDA kernels add floats with atomics by default (through a
shared-memory box per output tile) and switch under ``torch.use_deterministic_algorithms(True)`` to
fixed-point integer atomics, whose sum has the same bits in any order; the Triton
kernels add with atomics and raise (warn with ``warn_only=True``) under it on CUDA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.ops.checks import check_bool, check_float, check_int, check_same_device, check_size
from fastseg.ops.library import FusedOp, OpPair

PADDING_MODES = ("zeros", "border")


def _base_coordinates(out_size: int, in_size: int, align_corners: bool, like: Tensor) -> Tensor:
    """Input pixel coordinate of each output index along one axis, (out_size,)."""
    index = torch.arange(out_size, dtype=like.dtype, device=like.device)
    if align_corners:
        return index * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    return (index + 0.5) * (in_size / out_size if out_size else 0.0) - 0.5  # (an empty output has no index)


def _normalize(coordinate: Tensor, size: int, align_corners: bool) -> Tensor:
    """Input pixel coordinate -> grid_sample's [-1, 1] coordinate (the inverse of its unnormalisation)."""
    if align_corners:
        return 2 * coordinate / max(size - 1, 1) - 1  # size 1: grid_sample samples index 0 whatever the grid
    return (2 * coordinate + 1) / size - 1


def flow_warp_reference(
    input: Tensor, flow: Tensor, padding_mode: str = "border", align_corners: bool = True
) -> Tensor:
    """Plain-PyTorch flow_warp: the normalised grid of base + flow, then F.grid_sample.

    Shapes: input (B,C,Hi,Wi), flow (B,2,Ho,Wo) in input pixels -> (B,C,Ho,Wo) in input's dtype.
    Computed in fp32 (fp64 when either argument is fp64) so that fp16/bf16 inputs keep exact coordinates.
    """
    in_h, in_w = input.shape[-2:]
    out_h, out_w = flow.shape[-2:]
    work = torch.promote_types(torch.promote_types(input.dtype, flow.dtype), torch.float32)
    flow = flow.to(work)
    # NaN rule (fastseg.ops): a non-finite flow gives a NaN output pixel and no gradient. grid_sample
    # itself must never see one: its backward reads out of bounds on a NaN grid with border padding.
    bad = ~torch.isfinite(flow).all(dim=1)  # (B,Ho,Wo)
    flow = flow.masked_fill(bad.unsqueeze(1), 0.0)
    x = _base_coordinates(out_w, in_w, align_corners, flow).view(1, 1, -1) + flow[:, 0]
    y = _base_coordinates(out_h, in_h, align_corners, flow).view(1, -1, 1) + flow[:, 1]
    # beyond one pixel outside nothing changes (no corner inside, or clipped by "border"); the clamp
    # keeps grid_sample's integer conversion of huge coordinates defined
    x, y = x.clamp(-2, in_w + 1), y.clamp(-2, in_h + 1)
    grid = torch.stack((_normalize(x, in_w, align_corners), _normalize(y, in_h, align_corners)), dim=-1)
    output = F.grid_sample(input.to(work), grid, mode="bilinear", padding_mode=padding_mode,
                           align_corners=align_corners)
    output = output.masked_fill(bad.unsqueeze(1), float("nan"))
    return output.to(input.dtype)


def normalized_flow_to_pixels(flow: Tensor, input_size: tuple[int, int], align_corners: bool = True) -> Tensor:
    """Convert a flow in grid_sample's normalised units to input pixels (the unit of :func:`flow_warp`).

    A normalised flow is a displacement added to grid_sample's [-1, 1] grid, where -1 and 1 are the
    first and last input pixel centres (align_corners=True) or the input's outer edges (False):
    one normalised unit is (W - 1) / 2 pixels, resp. W / 2 pixels. The DecoupleSegNet/SFNet code
    makes it from its raw flow as ``raw / [[out_w, out_h]]`` before adding it to the base grid.

    Args:
        flow: (B, 2, H, W) normalised displacement, channel 0 = x, 1 = y.
        input_size: (Hi, Wi) of the map the flow samples.
        align_corners: grid_sample's convention the normalised flow was made for.

    Returns:
        (B, 2, H, W) displacement in input pixels (channel 0 = dx, 1 = dy).
    """
    check_float(flow, "flow", 4)
    check_size(flow.shape[1], 2, "flow channels")
    check_bool(align_corners, "align_corners")
    if not isinstance(input_size, (tuple, list, torch.Size)) or len(input_size) != 2:
        raise ValueError(f"input_size must be a pair (Hi, Wi), got {input_size!r}")
    in_h, in_w = (check_int(value, "input_size", 1) for value in input_size)
    shift = -1 if align_corners else 0
    scale = flow.new_tensor([(in_w + shift) / 2, (in_h + shift) / 2]).view(1, 2, 1, 1)
    return flow * scale


def _forward_triton(input: Tensor, flow: Tensor, padding_mode: str, align_corners: bool) -> Tensor:
    from fastseg.kernels import flow_warp as kernels

    return kernels.forward(input, flow, padding_mode, align_corners)


def _backward_triton(
    grad_output: Tensor, input: Tensor, flow: Tensor, padding_mode: str, align_corners: bool
) -> tuple[Tensor, Tensor]:
    from fastseg.kernels import flow_warp as kernels

    return kernels.backward(grad_output, input, flow, padding_mode, align_corners)


def _fake_forward(input, flow, padding_mode, align_corners):
    return input.new_empty(input.shape[0], input.shape[1], flow.shape[2], flow.shape[3])


def _fake_backward(grad_output, input, flow, padding_mode, align_corners):
    return input.new_empty(input.shape), flow.new_empty(flow.shape)


def _setup_context(ctx, inputs, output):
    input, flow, padding_mode, align_corners = inputs
    ctx.save_for_backward(input, flow)
    ctx.padding_mode = padding_mode
    ctx.align_corners = align_corners


def _autograd_backward(pair: OpPair):
    def backward(ctx, grad_output):
        input, flow = ctx.saved_tensors
        grad_input, grad_flow = pair.backward(grad_output.contiguous(), input, flow, ctx.padding_mode,
                                              ctx.align_corners)
        return grad_input, grad_flow, None, None

    return backward


def _fused_arguments(input, flow, padding_mode, align_corners):
    """The fused kernels take the flow in their coordinate dtype: fp64 for fp64 input, else fp32."""
    coordinates = flow.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    return input, coordinates, padding_mode, align_corners


FLOW_WARP = FusedOp("flow_warp", flow_warp_reference, _forward_triton, _backward_triton, _fake_forward,
                    _fake_backward, _setup_context, _autograd_backward, fused_arguments=_fused_arguments)


def flow_warp(
    input: Tensor, flow: Tensor, padding_mode: str = "border", align_corners: bool = True, *, backend: str | None = None
) -> Tensor:
    """Warp ``input`` by ``flow`` with bilinear sampling (DecoupleSegNet Eq. 1).

    Args:
        input: (B, C, Hi, Wi) floating point.
        flow: (B, 2, Ho, Wo) floating point, channel 0 = dx and 1 = dy in input pixels, added to the
            output grid mapped onto the input (``align_corners`` semantics; identity for equal sizes).
        padding_mode: "zeros" (outside samples are 0) or "border" (coordinates clipped to the image).
        align_corners: grid_sample's convention for mapping the output grid onto the input.
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        (B, C, Ho, Wo) in the dtype of ``input``, equal to ``F.grid_sample`` with the normalised grid.
        Differentiable w.r.t. input and flow. Coordinates and accumulation are fp32 (fp64 for fp64 input).
    """
    check_float(input, "input", 4)
    check_float(flow, "flow", 4)
    check_same_device(input=input, flow=flow)
    check_size(flow.shape[1], 2, "flow channels (dx, dy)")
    check_size(flow.shape[0], input.shape[0], "flow batch size")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"input must have a non-empty spatial size, got shape {tuple(input.shape)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    check_bool(align_corners, "align_corners")
    return FLOW_WARP(input.device, backend, input, flow, padding_mode, align_corners)


class FlowWarp(nn.Module):
    """Module form of :func:`flow_warp`: ``FlowWarp()(input, flow)``."""

    def __init__(self, padding_mode: str = "border", align_corners: bool = True):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        check_bool(align_corners, "align_corners")
        self.padding_mode = padding_mode
        self.align_corners = align_corners

    def forward(self, input: Tensor, flow: Tensor) -> Tensor:
        return flow_warp(input, flow, self.padding_mode, self.align_corners)

    def extra_repr(self) -> str:
        return f"padding_mode={self.padding_mode!r}, align_corners={self.align_corners}"
