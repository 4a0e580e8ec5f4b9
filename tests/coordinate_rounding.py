"""How far flow_warp's flow gradient may move because its kernels round the sample coordinate.

Every backend computes a coordinate as ``x * scale + shift + flow`` in fp32 (fp64 for fp64 flows):
three roundings, each at most the unit roundoff u times the value rounded, so the coordinate is off
by at most ``3 u (|base| + |flow| + 1)`` (base = x * scale + shift; |shift| < 1). Within a cell the
x-gradient is linear in the y coordinate (and the other way round), with slope
``sum_c grad_c (v11 - v10 - v01 + v00)``: over a few random channels that slope reaches ~10, so at
10 px (rounding ~1e-6) the flow gradient moves by ~1e-5 before any arithmetic of the kernel's own.
A float64 reference cannot see that term; the test adds it, per element, to its tolerance.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fastseg.ops.flow_warp import _base_coordinates, flow_warp_reference

# Central-difference step (px): samples stay 0.05 px off the integer lattice, where the bilinear
# derivative (and the border clip, and the zero-padding cut-off) jumps, so +-STEP stays in one cell.
STEP = 1e-3


def _coordinate_error(flow: Tensor, in_hw: tuple[int, int], align_corners: bool, unit_roundoff: float) -> Tensor:
    """(B,2,Ho,Wo): bound on |computed - exact| coordinate per pixel and axis (x, y)."""
    out_h, out_w = flow.shape[-2:]
    base_x = _base_coordinates(out_w, in_hw[1], align_corners, flow).view(1, 1, -1)
    base_y = _base_coordinates(out_h, in_hw[0], align_corners, flow).view(1, -1, 1)
    base = torch.stack(torch.broadcast_tensors(base_x, base_y, flow[:, 0])[:2], dim=1)
    return 3 * unit_roundoff * (base.abs() + flow.abs() + 1)


def _flow_gradient(input: Tensor, flow: Tensor, grad: Tensor, padding: str, align_corners: bool) -> Tensor:
    flow = flow.detach().requires_grad_()
    output = flow_warp_reference(input.detach(), flow, padding, align_corners)
    (result,) = torch.autograd.grad(output, flow, grad)
    return result


def flow_gradient_slack(input: Tensor, flow: Tensor, grad: Tensor, padding: str, align_corners: bool,
                        unit_roundoff: float) -> Tensor:
    """(B,2,Ho,Wo): what coordinate rounding alone can add to |grad_flow|, from the float64 reference.

    input (B,C,Hi,Wi), flow (B,2,Ho,Wo), grad (B,C,Ho,Wo), all float64; unit_roundoff of the
    coordinate dtype (2**-24 for fp32). Pixels are independent, so one perturbation of every
    pixel's axis-a coordinate gives each pixel's d(grad_flow)/d(coordinate a) at once.
    """
    error = _coordinate_error(flow, tuple(input.shape[-2:]), align_corners, unit_roundoff)
    slack = torch.zeros_like(flow)
    for axis in range(2):
        step = torch.zeros_like(flow)
        step[:, axis] = STEP
        slope = (_flow_gradient(input, flow + step, grad, padding, align_corners)
                 - _flow_gradient(input, flow - step, grad, padding, align_corners)) / (2 * STEP)
        slack += slope.abs() * error[:, axis : axis + 1]
    return slack


def assert_close_with_slack(actual: Tensor, expected: Tensor, slack: Tensor, atol: float, rtol: float,
                            name: str) -> None:
    """|actual - expected| <= atol + rtol |expected| + slack, element by element."""
    excess = (actual.double() - expected).abs() - (atol + rtol * expected.abs() + slack)
    worst = int(excess.argmax())
    assert excess.max() <= 0, (
        f"{name}: {int((excess > 0).sum())} / {excess.numel()} elements beyond atol {atol}, rtol {rtol} and the "
        f"coordinate-rounding slack; worst at flat index {worst}: {actual.flatten()[worst].item()} vs "
        f"{expected.flatten()[worst].item()} (slack {slack.flatten()[worst].item():.3g})"
    )
