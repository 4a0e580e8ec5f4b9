"""The NaN/Inf rule of fastseg.ops (see its module docstring) on the CUDA kernels, run on the
emulated-CUDA layer: only corners inside the image are read, a non-finite sampling position gives NaN
and sends no gradient, a NaN logit gives a NaN Lovász loss. The reference is the judge, as in
tests/ops/test_nonfinite.py for the other backends."""
from __future__ import annotations

import pytest
import torch

from fastseg import ops

from .compare import on_device

pytestmark = pytest.mark.emulated_cuda

NAN, INF = float("nan"), float("inf")


def _flow_warp_case():
    input = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    input[:, :, 0, 0] = INF  # element 0 of every plane: where corners outside the image used to point
    flow = 6 * torch.randn(2, 2, 7, 9, dtype=torch.float64)  # many samples leave the image
    flow[0, 0, 3, 4] = NAN
    flow[1, 1, 5, 2] = -INF
    return input, flow


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_flow_warp(emulated, padding, deterministic):
    input, flow = _flow_warp_case()
    expected = ops.flow_warp(input, flow, padding, True, backend="reference")
    output = emulated.flow_warp(*on_device(emulated, input, flow), padding, True)
    torch.testing.assert_close(output, expected, equal_nan=True)
    assert expected[0, :, 3, 4].isnan().all() and expected[1, :, 5, 2].isnan().all()

    input[:, :, 0, 0] = torch.randn(2, 3, dtype=torch.float64)  # finite input: gradients must stay finite
    x, f = input.clone().requires_grad_(), flow.clone().requires_grad_()
    out = ops.flow_warp(x, f, padding, True, backend="reference")
    grad_output = torch.where(out.isnan(), 0.0, torch.randn_like(out))
    out.backward(grad_output)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        grad_input, grad_flow = emulated.flow_warp_backward(*on_device(emulated, grad_output, input, flow), padding,
                                                            True)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert grad_input.isfinite().all(), "a NaN flow sends no gradient to the input"
    torch.testing.assert_close(grad_input, x.grad)
    assert grad_flow[0, :, 3, 4].eq(0).all() and grad_flow[1, :, 5, 2].eq(0).all()
    torch.testing.assert_close(grad_flow, f.grad)


def test_deform_conv2d(emulated):
    input = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    input[:, :, 0, 0] = INF
    offset = 3 * torch.randn(2, 2 * 9, 5, 5, dtype=torch.float64)
    offset[1, 4, 2, 2] = NAN
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    mask = torch.rand(2, 9, 5, 5, dtype=torch.float64)
    geometry = ([1, 1], [1, 1], [1, 1])
    expected = ops.deform_conv2d(input, offset, weight, None, 1, 1, 1, mask, backend="reference")
    output = emulated.deform_conv2d(*on_device(emulated, input, offset, weight, mask), None, *geometry)
    torch.testing.assert_close(output, expected, equal_nan=True)
    assert expected[1, :, 2, 2].isnan().all(), "a NaN offset gives a NaN output"

    input[:, :, 0, 0] = torch.randn(2, 4, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (input, offset, weight, mask)]
    out = ops.deform_conv2d(leaves[0], leaves[1], leaves[2], None, 1, 1, 1, leaves[3], backend="reference")
    grad_output = torch.where(out.isnan(), 0.0, torch.randn_like(out))
    out.backward(grad_output)
    grads = emulated.deform_conv2d_backward(*on_device(emulated, grad_output, input, offset, weight, mask), *geometry)
    for name, got, leaf in zip(("input", "offset", "weight", "mask"), grads, leaves):
        torch.testing.assert_close(got, leaf.grad, equal_nan=True, msg=name)
    assert grads[0].isfinite().all(), "a NaN offset sends no gradient to the input"


@pytest.mark.parametrize("pixels", [600, 2**14 + 600], ids=["fused", "packed"])
def test_lovasz_hinge(emulated, pixels):
    logits = torch.randn(3, pixels)  # rows longer than one scan tile
    labels = torch.rand(3, pixels) > 0.5
    logits[0, 7] = NAN
    logits[2] = NAN
    losses = emulated.lovasz_hinge(*on_device(emulated, logits, labels), None)[0]
    assert losses[0].isnan() and losses[2].isnan() and losses[1].isfinite()
    torch.testing.assert_close(losses[1], ops.lovasz_hinge(logits, labels, backend="reference")[1])
    valid = torch.ones_like(labels)
    valid[0, 7] = False  # an ignored NaN takes no part
    assert emulated.lovasz_hinge(*on_device(emulated, logits, labels, valid))[0][0].isfinite()


def test_gaussian_center_distance(emulated):
    """phi = 1 at infinite distance, and that pair sends no gradient; finite pairs keep theirs."""
    embeddings = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    centers = torch.randn(2, 6, 3, dtype=torch.float64)
    margins = 0.1 * torch.randn(2, 6, dtype=torch.float64)
    embeddings[0, 1, 0, 0] = INF
    centers[1, 4, 2] = -INF
    leaves = [t.clone().requires_grad_() for t in (embeddings, centers, margins)]
    expected = ops.gaussian_center_distance(*leaves, backend="reference")
    grad_phi = torch.randn_like(expected)
    expected.backward(grad_phi)
    device = on_device(emulated, embeddings, centers, margins)
    torch.testing.assert_close(emulated.gaussian_center_distance(*device, 10.0), expected.detach())
    grads = emulated.gaussian_center_distance_backward(*on_device(emulated, grad_phi), *device, 10.0)
    for name, got, leaf in zip(("embeddings", "centers", "margins"), grads, leaves):
        assert leaf.grad.isfinite().all()
        torch.testing.assert_close(got, leaf.grad, msg=name)
