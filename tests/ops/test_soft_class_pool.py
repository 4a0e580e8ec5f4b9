"""soft_class_pool and attentional_class_feature: every fused backend against the PyTorch reference."""
from __future__ import annotations


import pytest
import torch
from torch.library import opcheck

from fastseg import ops
from fastseg.ops.soft_class_pool import (
    ATTENTIONAL_CLASS_FEATURE,
    SOFT_CLASS_POOL,
    attentional_class_feature_reference,
    soft_class_pool_reference,
)

FUNCTIONS = {
    "soft_class_pool": (ops.soft_class_pool, soft_class_pool_reference),
    "attentional_class_feature": (ops.attentional_class_feature, attentional_class_feature_reference),
}


def _probs(batch, num_classes, height, width, zero_class=None):
    """A softmax over random logits; `zero_class` gets probability exactly 0 everywhere (mass 0)."""
    logits = 3 * torch.randn(batch, num_classes, height, width)
    if zero_class is not None:
        logits[:, zero_class] = float("-inf")
    return logits.softmax(dim=1)


CASES = {
    # name: (B, C, H, W, K)
    "small": (3, 37, 11, 13, 7),
    "batch1": (1, 16, 9, 9, 19),
    "one-pixel": (2, 5, 1, 1, 4),
    "ade20k-classes": (2, 8, 16, 20, 150),
    "large": (2, 80, 21, 25, 19),
}


def _compare(backend, device, features, probs, dtype=torch.float32, atol=1e-5, rtol=1e-5):
    """Both functions, values and gradients w.r.t. both inputs, against the float64 reference."""
    features = features.to(device=device, dtype=dtype).requires_grad_()
    probs = probs.to(device=device, dtype=dtype).requires_grad_()
    expected_features = features.detach().double().requires_grad_()
    expected_probs = probs.detach().double().requires_grad_()
    for function, reference in FUNCTIONS.values():
        out = function(features, probs, backend=backend)
        expected = reference(expected_features, expected_probs)
        assert out.dtype == dtype and out.shape == expected.shape
        torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
        grad = torch.randn_like(expected)
        if out.dim() == 3:
            # dZ scaled by the class mass, so that dS = dZ / n is O(1): dP = dS F - r cancels and its
            # rounding error grows with |dS| (a class of mass 1e-4 would amplify it 1e4 times)
            grad = grad * expected_probs.detach().sum(dim=(2, 3)).unsqueeze(-1)
        grad = grad.to(dtype)
        grads = torch.autograd.grad(out, (features, probs), grad)
        expected_grads = torch.autograd.grad(expected, (expected_features, expected_probs), grad.double())
        for got, want in zip(grads, expected_grads):
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(fused, case):
    backend, device = fused
    batch, channels, height, width, num_classes = CASES[case]
    _compare(backend, device, torch.randn(batch, channels, height, width), _probs(batch, num_classes, height, width))


def test_zero_mass_class_has_zero_center_and_gradient(fused):
    backend, device = fused
    features = torch.randn(2, 12, 7, 9)
    probs = _probs(2, 5, 7, 9, zero_class=3)
    _compare(backend, device, features, probs)
    features = features.to(device).requires_grad_()
    probs = probs.to(device).requires_grad_()
    centers = ops.soft_class_pool(features, probs, backend=backend)
    assert torch.all(centers[:, 3] == 0) and torch.all(centers[:, :3] != 0)
    for out in (centers, ops.attentional_class_feature(features, probs, backend=backend)):
        (grad_probs,) = torch.autograd.grad(out, probs, torch.randn_like(out))
        assert torch.all(grad_probs[:, 3] == 0) and torch.all(grad_probs[:, :3] != 0)


def test_non_contiguous_and_channels_last(fused):
    backend, device = fused
    features = torch.randn(2, 9, 12, 20).transpose(2, 3)[:, :, :10]  # (2, 9, 10, 12) non-contiguous view
    probs = _probs(2, 6, 12, 10).transpose(2, 3)
    assert not features.is_contiguous() and not probs.is_contiguous()
    _compare(backend, device, features, probs)
    features = torch.randn(2, 9, 10, 12).to(memory_format=torch.channels_last)
    probs = _probs(2, 6, 10, 12).to(memory_format=torch.channels_last)
    _compare(backend, device, features, probs)


def test_float64_and_low_precision(fused):
    backend, device = fused
    features = torch.randn(2, 24, 10, 14)
    probs = _probs(2, 6, 10, 14)
    _compare(backend, device, features, probs, dtype=torch.float64, atol=1e-12, rtol=1e-12)
    for dtype in (torch.float16, torch.bfloat16):
        # inputs rounded to the low precision; the sums accumulate in fp32, roundings at the ends
        _compare(backend, device, features.to(dtype).float(), probs.to(dtype).float(), dtype=dtype,
                 atol=2e-2, rtol=2e-2)


def test_deterministic(fused):
    """Split reductions are added in a fixed order: two runs agree bit for bit, gradients included."""
    backend, device = fused
    features = torch.randn(2, 20, 25, 44, device=device, requires_grad=True)  # 1100 pixels: split on GPUs
    probs = _probs(2, 5, 25, 44).to(device).requires_grad_()
    grad = torch.randn_like(features)
    runs = []
    for _ in range(2):
        out = ops.attentional_class_feature(features, probs, backend=backend)
        runs.append((out, *torch.autograd.grad(out, (features, probs), grad)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_gradcheck(differentiable, function):
    backend, device = differentiable
    fn = FUNCTIONS[function][0]
    features = torch.randn(2, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    probs = _probs(2, 3, 2, 3).to(device=device, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: fn(x, p, backend=backend), (features, probs))


def _op_of(backend, function):
    declaration = {"soft_class_pool": SOFT_CLASS_POOL, "attentional_class_feature": ATTENTIONAL_CLASS_FEATURE}
    return declaration[function].pair(backend).forward


@pytest.mark.parametrize("function", FUNCTIONS)
def test_opcheck(fused, function):
    backend, device = fused
    features = torch.randn(2, 5, 6, 7, device=device, requires_grad=True)
    probs = _probs(2, 4, 6, 7).to(device).requires_grad_()
    opcheck(_op_of(backend, function), (features, probs))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_compile_fullgraph_matches_eager(fused, function):
    backend, device = fused
    fn = FUNCTIONS[function][0]
    features = torch.randn(2, 8, 9, 10, device=device, requires_grad=True)
    logits = torch.randn(2, 5, 9, 10, device=device, requires_grad=True)

    def loss(x, z):
        return fn(torch.relu(x), z.softmax(dim=1), backend=backend).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(features, logits)
    eager_grads = torch.autograd.grad(eager_value, (features, logits))
    value = compiled(features, logits)
    grads = torch.autograd.grad(value, (features, logits))
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grads, eager_grads)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "features, probs, message",
    [
        (torch.randn(2, 3, 4, 5), torch.rand(3, 6, 4, 5), "probs batch size"),
        (torch.randn(2, 3, 4, 5), torch.rand(2, 6, 4, 6), "probs spatial size"),
        (torch.randint(0, 3, (2, 3, 4, 5)), torch.rand(2, 6, 4, 5), "features must be a floating"),
        (torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 6, 4, 5)), "probs must be a floating"),
        (torch.randn(3, 4, 5), torch.rand(2, 6, 4, 5), "features must have 4 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.rand(2, 20, 4), "probs must have 4 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.rand(2, 6, 4, 5, device="meta"), "probs is on meta"),
        (torch.randn(2, 3, 4, 5), torch.rand(2, 6, 4, 5, dtype=torch.float64), "probs has dtype"),
        (torch.randn(2, 3, 4, 5), torch.rand(2, 0, 4, 5), "probs must have at least one class"),
    ],
)
def test_bad_input_names_the_argument(function, features, probs, message):
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[function][0](features, probs)


def test_modules_match_functions():
    features = torch.randn(2, 4, 12, 16)
    probs = _probs(2, 6, 12, 16)
    torch.testing.assert_close(ops.SoftClassPool()(features, probs), soft_class_pool_reference(features, probs))
    torch.testing.assert_close(
        ops.AttentionalClassFeature()(features, probs), attentional_class_feature_reference(features, probs)
    )
