"""The NaN/Inf rule of fastseg.ops (see its module docstring), on the reference and every fused backend:
a non-finite value reaches exactly the outputs that read it, a non-finite sampling position gives NaN,
and a NaN logit gives a NaN loss."""
from __future__ import annotations

import pytest
import torch

from fastseg import ops

# These tests feed NaN/Inf on purpose; the Triton interpreter computes with numpy, which warns on them.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in:RuntimeWarning")

NAN, INF = float("nan"), float("inf")


def _flow_warp_case():
    input = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    input[:, :, 0, 0] = INF  # element 0 of every plane: the index of corners outside the image
    flow = 6 * torch.randn(2, 2, 7, 9, dtype=torch.float64)  # many samples leave the image
    flow[0, 0, 3, 4] = NAN
    flow[1, 1, 5, 2] = -INF
    return input, flow


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_flow_warp_follows_the_rule(fused, padding):
    backend, device = fused
    input, flow = _flow_warp_case()
    expected = ops.flow_warp(input, flow, padding, True, backend="reference")
    output = ops.flow_warp(input.to(device), flow.to(device), padding, True, backend=backend).cpu()
    torch.testing.assert_close(output, expected, equal_nan=True)
    assert expected[0, :, 3, 4].isnan().all() and expected[1, :, 5, 2].isnan().all(), "a NaN/Inf flow gives NaN"
    finite = expected.isfinite().sum().item()
    assert finite > 0.6 * expected.numel(), f"the Inf at [0, 0] reaches only nearby samples ({finite} finite)"


def test_flow_warp_gradients_follow_the_rule(fused):
    backend, device = fused
    input, flow = _flow_warp_case()
    input[:, :, 0, 0] = torch.randn(2, 3, dtype=torch.float64)  # finite input: gradients must stay finite
    grad = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    results = []
    for name, where in (("reference", "cpu"), (backend, device)):
        x = input.to(where, copy=True).requires_grad_()  # a copy: the two runs must not share leaves
        f = flow.to(where, copy=True).requires_grad_()
        out = ops.flow_warp(x, f, "border", True, backend=name)
        out.backward(torch.where(out.isnan(), 0.0, grad.to(where)))
        results.append((x.grad.cpu(), f.grad.cpu()))
    (ref_input, ref_flow), (grad_input, grad_flow) = results
    assert ref_input.isfinite().all() and grad_input.isfinite().all(), "a NaN flow sends no gradient to the input"
    torch.testing.assert_close(grad_input, ref_input)
    assert grad_flow[0, :, 3, 4].eq(0).all() and grad_flow[1, :, 5, 2].eq(0).all()
    torch.testing.assert_close(grad_flow, ref_flow)


def _deform_case():
    input = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    offset = 3 * torch.randn(2, 2 * 9, 5, 5, dtype=torch.float64)
    offset[1, 4, 2, 2] = NAN
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    mask = torch.rand(2, 9, 5, 5, dtype=torch.float64)
    return input, offset, weight, mask


def test_deform_conv2d_inf_at_element_zero_stays_local(fused):
    """Was: one Inf at input[..., 0, 0] made 21 of 25 outputs NaN (outside corners read element 0 with weight 0)."""
    backend, device = fused
    input, offset, weight, mask = _deform_case()
    offset[1, 4, 2, 2] = 0.5
    input[:, :, 0, 0] = INF
    expected = ops.deform_conv2d(input, offset, weight, None, 1, 1, 1, mask, backend="reference")
    output = ops.deform_conv2d(*(t.to(device) for t in (input, offset, weight)), None, 1, 1, 1, mask.to(device),
                               backend=backend).cpu()
    torch.testing.assert_close(output, expected, equal_nan=True)
    assert expected.isfinite().sum() >= 0.5 * expected.numel()


def test_deform_conv2d_nan_offset_gives_nan_and_no_gradient_leak(fused):
    backend, device = fused
    input, offset, weight, mask = _deform_case()
    results = []
    for name, where in (("reference", "cpu"), (backend, device)):
        tensors = [t.to(where, copy=True).requires_grad_() for t in (input, offset, weight, mask)]
        x, off, w, m = tensors
        out = ops.deform_conv2d(x, off, w, None, 1, 1, 1, m, backend=name)
        assert out[1, :, 2, 2].isnan().all(), "the output whose sample position is NaN"
        assert out.isnan().sum() == out.shape[1], "and no other"
        out.backward(torch.where(out.isnan(), 0.0, torch.ones_like(out)))
        results.append([t.grad.cpu() for t in tensors])
    for name, expected, actual in zip(("input", "offset", "weight", "mask"), *results):
        if name != "weight":  # the weight gradient reads the NaN column: NaN on every backend
            assert actual.isfinite().all(), f"grad {name} stays finite"
        torch.testing.assert_close(actual, expected, equal_nan=True, msg=f"grad {name}")


def test_deform_conv2d_nan_mask_does_not_poison_other_pixels(fused):
    """Was: a NaN mask value poisoned grad_input[..., 0, 0] of the C++ backward."""
    backend, device = fused
    input, offset, weight, mask = _deform_case()
    offset[1, 4, 2, 2] = 40.0  # this sample is far outside: no neighbour in the image
    mask[1, 2, 2, 2] = NAN
    results = []
    for name, where in (("reference", "cpu"), (backend, device)):
        x = input.to(where, copy=True).requires_grad_()  # a copy: the two runs must not share leaves
        out = ops.deform_conv2d(x, offset.to(where), weight.to(where), None, 1, 1, 1, mask.to(where), backend=name)
        out.backward(torch.where(out.isnan(), 0.0, torch.ones_like(out)))
        results.append(x.grad.cpu())
    assert results[1].isfinite().all()
    torch.testing.assert_close(results[1], results[0])


def test_reference_lovasz_nan_in_nan_out():
    _check_lovasz_nan("reference", torch.device("cpu"))


def test_fused_lovasz_nan_in_nan_out(fused):
    _check_lovasz_nan(*fused)


def _check_lovasz_nan(backend, device):
    """Was: one NaN logit gave a finite loss (1.3498), all NaN gave 0.0, hiding them from the trainer."""
    logits = torch.randn(3, 50, device=device)
    labels = torch.rand(3, 50, device=device) > 0.5
    logits[0, 7] = NAN
    logits[2] = NAN
    losses = ops.lovasz_hinge(logits, labels, backend=backend)
    assert losses[0].isnan() and losses[2].isnan() and losses[1].isfinite()
    valid = torch.ones_like(labels)
    valid[0, 7] = False  # an ignored NaN takes no part
    assert ops.lovasz_hinge(logits, labels, valid, backend=backend)[0].isfinite()
    probs = torch.rand(2, 4, 5, 5, device=device).softmax(1)
    target = torch.randint(0, 4, (2, 5, 5), device=device)
    probs[1, 2, 3, 3] = NAN
    assert ops.lovasz_softmax(probs, target, backend=backend).isnan()
    assert ops.lovasz_softmax(probs, target, per_image=True, backend=backend).isnan()
    target[1, 3, 3] = 255  # ignored pixel: its NaN takes no part
    assert ops.lovasz_softmax(probs, target, backend=backend).isfinite()


def test_reference_class_avg_pool_ignore_index_inside_the_class_range():
    _check_ignore_index_inside("reference", torch.device("cpu"))


def test_fused_class_avg_pool_ignore_index_inside_the_class_range(fused):
    _check_ignore_index_inside(*fused)


def _check_ignore_index_inside(name, device):
    """Was: ignore_index in [0, K) counted the ignored pixels as that class."""
    features = torch.randn(2, 3, 6, 5, device=device, requires_grad=True)
    labels = torch.randint(0, 4, (2, 6, 5), device=device)
    centers, counts = ops.class_avg_pool(features, labels, 4, ignore_index=1, backend=name)
    assert counts[:, 1].eq(0).all() and centers[:, 1].eq(0).all()
    for b in range(2):
        for k in (0, 2, 3):
            chosen = labels[b] == k
            assert counts[b, k] == chosen.sum()
            if chosen.any():
                torch.testing.assert_close(centers[b, k], features[b][:, chosen].mean(1))
    centers.sum().backward()
    assert features.grad.permute(1, 0, 2, 3)[:, labels == 1].eq(0).all(), "ignored pixels get no gradient"


def test_triton_deform_conv2d_reads_a_strided_bias(fused):
    """Was: the Triton kernel ignored the bias's stride (errors up to 1.24)."""
    backend, device = fused
    input, offset, weight, mask = _deform_case()
    offset[1, 4, 2, 2] = 0.25
    bias = torch.randn(6, dtype=torch.float64)[::2]  # a view with stride 2
    expected = ops.deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, backend="reference")
    output = ops.deform_conv2d(*(t.to(device) for t in (input, offset, weight, bias)), 1, 1, 1, mask.to(device),
                               backend=backend).cpu()
    torch.testing.assert_close(output, expected)


def test_gaussian_center_distance_forward_follows_the_rule(fused):
    """Rule 4: an infinite distance gives phi = 1 on every backend, a NaN embedding NaN."""
    backend, device = fused
    embeddings = torch.randn(2, 3, 4, 5)
    centers = torch.randn(2, 6, 3)
    margins = 0.1 * torch.randn(2, 6)
    embeddings[0, 1, 0, 0] = INF
    embeddings[1, 0, 2, 3] = NAN
    centers[1, 4, 2] = -INF
    expected = ops.gaussian_center_distance(embeddings, centers, margins, backend="reference")
    output = ops.gaussian_center_distance(embeddings.to(device), centers.to(device), margins.to(device),
                                          backend=backend).cpu()
    torch.testing.assert_close(output, expected, equal_nan=True)
    assert expected[0, :, 0, 0].eq(1).all() and expected[1, 4].eq(1).sum() == 4 * 5 - 1  # but NaN at (2, 3)
    assert expected[1, :, 2, 3].isnan().all() and expected.isnan().sum() == 6


def test_gaussian_center_distance_gradients_follow_the_rule(fused):
    """Rule 4 in the backward: a pair at infinite distance sends no gradient (was: NaN margin gradients in the
    reference, NaN at the infinite entries in C++ and along the infinite pixel's channels in Triton)."""
    backend, device = fused
    embeddings = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    centers = torch.randn(2, 6, 3, dtype=torch.float64)
    margins = 0.1 * torch.randn(2, 6, dtype=torch.float64)
    embeddings[0, 1, 0, 0] = INF
    centers[1, 4, 2] = -INF
    grad_phi = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    results = []
    for name, where in (("reference", "cpu"), (backend, device)):
        leaves = [t.to(where, copy=True).requires_grad_() for t in (embeddings, centers, margins)]
        ops.gaussian_center_distance(*leaves, backend=name).backward(grad_phi.to(where))
        results.append([leaf.grad.cpu() for leaf in leaves])
    for expected, got, name in zip(*results, ("embeddings", "centers", "margins")):
        assert expected.isfinite().all(), f"reference {name} gradient is not finite"
        torch.testing.assert_close(got, expected, msg=name)
    grad_embeddings, grad_centers, grad_margins = results[0]
    assert grad_embeddings[0, :, 0, 0].eq(0).all() and grad_centers[1, 4].eq(0).all() and grad_margins[1, 4] == 0
    assert grad_embeddings[0, :, 1, 1].ne(0).all(), "finite pairs keep their gradient"
