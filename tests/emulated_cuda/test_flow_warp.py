"""flow_warp's CUDA kernels (forward; backward with atomic splat, or the deterministic fixed-point
splat with its plane norms and the in-order splat of non-finite planes; chunk sums; fp16/bf16
conversion) on the emulated-CUDA layer."""
from __future__ import annotations

import pytest
import torch

from fastseg.ops.flow_warp import flow_warp_reference

from .compare import DTYPES, check_every_order, on_device
from .extension import ORDERS, thread_order

pytestmark = pytest.mark.emulated_cuda

CASES = {
    # name: (B, C, Hi, Wi, Ho, Wo)
    "same-size": (2, 5, 11, 13, 11, 13),
    "upsample": (2, 4, 6, 7, 12, 14),
    "downsample": (2, 3, 13, 15, 7, 6),
    "batch1": (1, 7, 9, 10, 9, 10),
    "one-pixel-input": (2, 3, 1, 1, 4, 5),
    "70-channels": (2, 70, 5, 6, 5, 6),  # three chunks of 32 channels
}


def _base(out_size, in_size, align_corners):
    """Input coordinate of every output index (float64), as flow_warp defines it."""
    index = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        return index * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    return (index + 0.5) * (in_size / out_size) - 0.5


def _flow(batch, in_hw, out_hw, align_corners, dtype):
    """(B,2,Ho,Wo) flow whose samples cover about [-size, 2 size) per axis (many outside the image),
    kept 0.05 pixel away from the integer lattice, where the bilinear derivative jumps."""
    shape = (batch, out_hw[0], out_hw[1])

    def axis(in_size, out_size, view):
        whole = torch.randint(-in_size - 1, 2 * in_size + 1, shape)
        target = whole + 0.05 + 0.9 * torch.rand(shape, dtype=torch.float64)
        return target - _base(out_size, in_size, align_corners).view(view)

    flow = torch.stack((axis(in_hw[1], out_hw[1], (1, 1, -1)), axis(in_hw[0], out_hw[0], (1, -1, 1))), dim=1)
    return flow.to(dtype)


def _check(emulated, input, flow, padding, align, deterministic):
    reference_input = input.detach().double().requires_grad_()
    reference_flow = flow.detach().double().requires_grad_()
    output = flow_warp_reference(reference_input, reference_flow, padding, align)
    grad_output = torch.randn_like(output).to(input.dtype)
    grad_input, grad_flow = torch.autograd.grad(output, (reference_input, reference_flow), grad_output.double())

    input, flow, grad_output = on_device(emulated, input, flow, grad_output)

    def run():
        got = emulated.flow_warp(input, flow, padding, align)
        return (got, *emulated.flow_warp_backward(grad_output, input, flow, padding, align))

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        # the atomic splat makes grad_input depend on the thread order; everything else is deterministic
        check_every_order(run, (output, grad_input, grad_flow), input.dtype, deterministic=(True, deterministic, True))
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("align", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case, padding, align, deterministic):
    batch, channels, in_h, in_w, out_h, out_w = CASES[case]
    input = torch.randn(batch, channels, in_h, in_w)
    flow = _flow(batch, (in_h, in_w), (out_h, out_w), align, torch.float32)
    _check(emulated, input, flow, padding, align, deterministic)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_and_non_contiguous(emulated, dtype, deterministic):
    coord = torch.float64 if dtype == torch.float64 else torch.float32
    input = torch.randn(2, 6, 9, 7).to(dtype).transpose(2, 3)  # (2, 6, 7, 9), not contiguous
    flow = _flow(2, (7, 9), (8, 5), True, coord)
    _check(emulated, input, flow, "zeros", True, deterministic)
    _check(emulated, input, flow, "border", True, deterministic)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_planes_with_inf_and_nan(emulated, dtype):
    """Planes whose grad_output holds inf or NaN cannot be summed in fixed point: they are splatted in
    pixel order with IEEE semantics (inf/NaN where the reference has them), the other planes as usual."""
    input = torch.randn(2, 3, 6, 7).to(dtype)
    flow = 0.3 * torch.randn(2, 2, 5, 8)  # samples inside the image: the inf and NaN reach grad_input
    grad_output = torch.randn(2, 3, 5, 8).to(dtype)
    grad_output[0, 1, 2, 3] = float("inf")
    grad_output[1, 2, 4, 0] = float("nan")
    reference_input = input.detach().double().requires_grad_()
    output = flow_warp_reference(reference_input, flow.double(), "zeros", True)
    (expected,) = torch.autograd.grad(output, reference_input, grad_output.double())
    assert expected[0, 1].isinf().any() and expected[1, 2].isnan().any() and expected.isfinite().any()
    input, flow, grad_output = on_device(emulated, input, flow, grad_output)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for order in ORDERS:
            with thread_order(order, seed=3):
                (grad_input, _) = emulated.flow_warp_backward(grad_output, input, flow, "zeros", True)
            atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1.6e-2, 1.6e-2)
            torch.testing.assert_close(grad_input.double(), expected, atol=atol, rtol=rtol, equal_nan=True)
            results.append(grad_input)
        assert all(torch.equal(r.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               results[0].view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
                   for r in results)
    finally:
        torch.use_deterministic_algorithms(previous)
