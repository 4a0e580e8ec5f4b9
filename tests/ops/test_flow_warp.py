"""flow_warp: every fused backend against the grid_sample reference, values and gradients."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from fastseg import ops
from fastseg.ops.flow_warp import FLOW_WARP, flow_warp_reference

from coordinate_rounding import assert_close_with_slack, flow_gradient_slack

PADDINGS = ("zeros", "border")


def _base(out_size, in_size, align_corners):
    """Input pixel coordinate of every output index (float64), as flow_warp defines it."""
    index = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        return index * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    return (index + 0.5) * (in_size / out_size) - 0.5


def _flow(batch, in_hw, out_hw, align_corners, reach=1.0):
    """Random (B,2,Ho,Wo) float32 flow whose sample points stay 0.05 pixel away from the integer lattice.

    The bilinear derivative w.r.t. the coordinate jumps there (and so do border clipping and the
    zero-padding cut-off), so a flow gradient is only comparable across float rounding away from it.
    Sample points cover about [-reach * size, (1 + reach) * size) along each axis: reach > 0 leaves the image.
    """
    shape = (batch, out_hw[0], out_hw[1])

    def axis(in_size, out_size, view):
        low, high = int(-reach * in_size) - 1, int((1 + reach) * in_size) + 1
        target = torch.randint(low, high, shape).double() + 0.05 + 0.9 * torch.rand(shape, dtype=torch.float64)
        return target - _base(out_size, in_size, align_corners).view(view)

    flow_x = axis(in_hw[1], out_hw[1], (1, 1, -1))
    flow_y = axis(in_hw[0], out_hw[0], (1, -1, 1))
    return torch.stack((flow_x, flow_y), dim=1).float()


def _compare(backend, device, input, flow, padding, align, dtype=torch.float32, atol=1e-5, rtol=1e-5,
             flow_grad=True):
    """Output and both gradients of `backend` against the reference evaluated in float64; the flow
    gradient also within what the kernel's rounded coordinate alone moves it (tests/coordinate_rounding.py)."""
    input = input.to(device=device, dtype=dtype).requires_grad_()
    flow = flow.to(device).requires_grad_()
    ref_input = input.detach().double().requires_grad_()
    ref_flow = flow.detach().double().requires_grad_()
    output = ops.flow_warp(input, flow, padding, align, backend=backend)
    expected = flow_warp_reference(ref_input, ref_flow, padding, align)
    assert output.dtype == dtype and output.shape == expected.shape
    torch.testing.assert_close(output.double(), expected, atol=atol, rtol=rtol)
    grad = torch.randn_like(expected).to(dtype)
    grad_input, grad_flow = torch.autograd.grad(output, (input, flow), grad)
    expected_input, expected_flow = torch.autograd.grad(expected, (ref_input, ref_flow), grad.double())
    assert grad_input.dtype == dtype and grad_flow.dtype == flow.dtype
    torch.testing.assert_close(grad_input.double(), expected_input, atol=atol, rtol=rtol)
    if flow_grad:
        coordinate = torch.promote_types(torch.promote_types(dtype, flow.dtype), torch.float32)
        slack = flow_gradient_slack(ref_input, ref_flow, grad.double(), padding, align, torch.finfo(coordinate).eps / 2)
        assert_close_with_slack(grad_flow, expected_flow, slack, atol, rtol, "grad_flow")


CASES = {
    # name: (B, C, Hi, Wi, Ho, Wo)
    "same-size": (2, 5, 11, 13, 11, 13),
    "sfnet-upsample": (2, 4, 6, 7, 12, 14),
    "downsample": (2, 3, 13, 15, 7, 6),
    "batch1": (1, 7, 9, 10, 9, 10),
    "one-pixel-input": (2, 3, 1, 1, 4, 5),
    "many-channels": (2, 70, 8, 9, 8, 9),
}


@pytest.mark.parametrize("align", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("case", CASES)
def test_matches_grid_sample(fused, case, padding, align):
    backend, device = fused
    batch, channels, in_h, in_w, out_h, out_w = CASES[case]
    input = torch.randn(batch, channels, in_h, in_w)
    flow = _flow(batch, (in_h, in_w), (out_h, out_w), align, reach=0.2)
    _compare(backend, device, input, flow, padding, align)


@pytest.mark.parametrize("align", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_large_flows_leave_the_image(fused, padding, align):
    backend, device = fused
    input = torch.randn(2, 6, 10, 12)
    flow = _flow(2, (10, 12), (9, 14), align, reach=2.0)
    _compare(backend, device, input, flow, padding, align)
    # far outside: zeros gives 0, border the edge pixel; no out-of-bounds read
    huge = flow + 1e6 * (2 * torch.randint(0, 2, flow.shape) - 1)
    _compare(backend, device, input, huge, padding, align)


@pytest.mark.parametrize("align", [True, False], ids=["align", "no-align"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_zero_flow_same_size_is_identity(fused, padding, align):
    backend, device = fused
    input = torch.randn(2, 5, 9, 11, device=device, requires_grad=True)
    flow = torch.zeros(2, 2, 9, 11, device=device, requires_grad=True)
    output = ops.flow_warp(input, flow, padding, align, backend=backend)
    assert torch.equal(output, input)
    grad = torch.randn_like(output)
    (grad_input,) = torch.autograd.grad(output, input, grad)
    assert torch.equal(grad_input, grad)


@pytest.mark.parametrize(
    "padding, align", [("border", True), ("border", False), ("zeros", True)],
    ids=["border-align", "border-no-align", "zeros-align"],
)
@pytest.mark.parametrize("sizes", [((6, 7), (13, 12)), ((13, 12), (5, 8))], ids=["up", "down"])
def test_zero_flow_is_bilinear_resize(fused, sizes, padding, align):
    """F.interpolate clamps source coordinates into the image, as border padding does; with
    align_corners=True no coordinate leaves the image, so zeros padding agrees too."""
    backend, device = fused
    (in_h, in_w), (out_h, out_w) = sizes
    input = torch.randn(2, 4, in_h, in_w, device=device)
    flow = torch.zeros(2, 2, out_h, out_w, device=device)
    output = ops.flow_warp(input, flow, padding, align, backend=backend)
    expected = F.interpolate(input, size=(out_h, out_w), mode="bilinear", align_corners=align)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_non_contiguous_and_channels_last(fused):
    backend, device = fused
    # Layouts are under test here, so sample points stay within 0.3 image sizes of the image
    base = torch.randn(2, 6, 14, 10)
    input = base.transpose(2, 3)[:, :, :12]  # (2, 6, 10, 12) non-contiguous view
    flow = _flow(2, (10, 12), (11, 9), True, reach=0.3).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not input.is_contiguous() and not flow.is_contiguous()
    _compare(backend, device, input, flow, "border", True)
    channels_last = torch.randn(2, 6, 10, 12).to(memory_format=torch.channels_last)
    flow_last = _flow(2, (10, 12), (11, 9), False, reach=0.3).to(memory_format=torch.channels_last)
    _compare(backend, device, channels_last, flow_last, "zeros", False)


def test_float64_and_low_precision(fused):
    backend, device = fused
    input = torch.randn(2, 24, 10, 14)
    flow = _flow(2, (10, 14), (12, 11), True, reach=0.3)
    _compare(backend, device, input, flow.double(), "zeros", True, dtype=torch.float64, atol=1e-12, rtol=1e-12)
    for dtype in (torch.float16, torch.bfloat16):
        # inputs rounded to the low precision; fp32 coordinates and sums, one rounding at the end
        _compare(backend, device, input.to(dtype).float(), flow, "border", True, dtype=dtype, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("padding, align", [("zeros", False), ("border", True)], ids=["zeros-no-align", "border-align"])
def test_gradcheck(differentiable, padding, align):
    backend, device = differentiable
    input = torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    flow = _flow(2, (4, 5), (3, 4), align, reach=0.5).double().to(device).requires_grad_()
    # the Triton interpreter costs ~0.1 s a launch: check a random projection of the Jacobian there
    fast_mode = backend == "triton" and device.type == "cpu"
    # on a GPU grad_input is summed by atomic adds in no fixed order: repeated backwards may differ in the last bits
    nondet_tol = 1e-12 if device.type == "cuda" else 0.0
    assert torch.autograd.gradcheck(
        lambda x, f: ops.flow_warp(x, f, padding, align, backend=backend), (input, flow),
        fast_mode=fast_mode, nondet_tol=nondet_tol,
    )


@pytest.mark.parametrize("padding, align", [("zeros", True), ("border", False)], ids=["zeros-align", "border-no-align"])
def test_opcheck(fused, padding, align):
    backend, device = fused
    input = torch.randn(2, 3, 5, 6, device=device, requires_grad=True)
    flow = _flow(2, (5, 6), (4, 7), align, reach=0.3).to(device).requires_grad_()
    opcheck(FLOW_WARP.pair(backend).forward, (input, flow, padding, align))


def test_compile_fullgraph_matches_eager(fused):
    backend, device = fused
    input = torch.randn(2, 4, 7, 8, device=device, requires_grad=True)
    flow = _flow(2, (7, 8), (9, 6), True, reach=0.3).to(device).requires_grad_()

    def loss(x, f):
        return ops.flow_warp(torch.tanh(x), f * 1.5, "border", True, backend=backend).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(input, flow)
    eager_grads = torch.autograd.grad(eager_value, (input, flow))
    value = compiled(input, flow)
    grads = torch.autograd.grad(value, (input, flow))
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grads, eager_grads)


def test_compile_inductor_cpu():
    """Inductor (not only aot_eager) around the C++ op: no graph break, same values."""
    if not ops.build_info()["loaded"]:
        pytest.skip("fastseg._C is not usable: " + ops.build_info()["reason"])
    input = torch.randn(2, 4, 7, 8)
    flow = _flow(2, (7, 8), (7, 8), False, reach=0.3)

    def fn(x, f):
        return ops.flow_warp(torch.relu(x) * 2, f, "zeros", False, backend="cpu") + 1

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(input, flow), fn(input, flow))


def test_deterministic_algorithms(fused):
    """CPU kernels are deterministic; on a GPU the CUDA backward has a deterministic path and the
    Triton backward (atomic adds) refuses."""
    backend, device = fused
    input = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    flow = _flow(2, (6, 7), (12, 14), True, reach=0.2)
    grad = torch.randn(2, 8, 12, 14, dtype=torch.float64)
    ref_flow = flow.double().requires_grad_()
    ref_input = input.clone().requires_grad_()
    expected = torch.autograd.grad(flow_warp_reference(ref_input, ref_flow), (ref_input, ref_flow), grad)
    input = input.float().to(device).requires_grad_()
    flow = flow.to(device).requires_grad_()

    def grads():
        output = ops.flow_warp(input, flow, "border", True, backend=backend)
        return torch.autograd.grad(output, (input, flow), grad.float().to(device))

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        if backend == "triton" and device.type == "cuda":
            with pytest.raises(RuntimeError, match="deterministic"):
                grads()
            return
        first, second = grads(), grads()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.testing.assert_close(first[0].double().cpu(), expected[0], atol=1e-5, rtol=1e-5)
    slack = flow_gradient_slack(ref_input, ref_flow, grad, "border", True, torch.finfo(torch.float32).eps / 2)
    assert_close_with_slack(first[1].cpu(), expected[1], slack, 1e-5, 1e-5, "grad_flow")


@pytest.mark.parametrize(
    "input, flow, kwargs, message",
    [
        (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), {}, "flow channels"),
        (torch.randn(2, 3, 4, 5), torch.randn(3, 2, 4, 5), {}, "flow batch size"),
        (torch.randint(0, 3, (2, 3, 4, 5)), torch.randn(2, 2, 4, 5), {}, "input must be a floating"),
        (torch.randn(2, 3, 4, 5), torch.zeros(2, 2, 4, 5, dtype=torch.long), {}, "flow must be a floating"),
        (torch.randn(3, 4, 5), torch.randn(3, 2, 4, 5), {}, "input must have 4 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 2, 4), {}, "flow must have 4 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 2, 4, 5, device="meta"), {}, "flow is on meta"),
        (torch.randn(2, 3, 0, 5), torch.randn(2, 2, 4, 5), {}, "input must have a non-empty"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 2, 4, 5), {"padding_mode": "reflection"}, "padding_mode"),
    ],
)
def test_bad_input_names_the_argument(input, flow, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.flow_warp(input, flow, **kwargs)


def test_module_and_normalized_flow_match_decouplesegnet_grid():
    """FlowWarp on normalized_flow_to_pixels(raw / size) equals the DecoupleSegNet/SFNet recipe:
    grid_sample on an align_corners=True base grid plus the flow divided by the output size."""
    input = torch.randn(2, 5, 8, 11)
    raw = torch.randn(2, 2, 16, 22) * 3
    out_h, out_w = raw.shape[2:]
    normalized = raw / torch.tensor([out_w, out_h], dtype=torch.float32).view(1, 2, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, out_h), torch.linspace(-1, 1, out_w), indexing="ij")
    grid = torch.stack((xs, ys), dim=-1).unsqueeze(0) + normalized.permute(0, 2, 3, 1)
    expected = F.grid_sample(input, grid, mode="bilinear", padding_mode="border", align_corners=True)
    module = ops.FlowWarp(padding_mode="border", align_corners=True)
    output = module(input, ops.normalized_flow_to_pixels(normalized, (8, 11), align_corners=True))
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert "padding_mode='border'" in repr(module)


def test_normalized_flow_units():
    """One normalised unit is (W - 1) / 2 pixels with align_corners=True and W / 2 without."""
    flow = torch.ones(1, 2, 3, 4)
    pixels = ops.normalized_flow_to_pixels(flow, (5, 9), align_corners=True)
    assert torch.equal(pixels[0, :, 0, 0], torch.tensor([4.0, 2.0]))
    pixels = ops.normalized_flow_to_pixels(flow, (5, 9), align_corners=False)
    assert torch.equal(pixels[0, :, 0, 0], torch.tensor([4.5, 2.5]))
