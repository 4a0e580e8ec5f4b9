"""gaussian_center_distance (CSFRNet Eq. 2): every fused backend against the PyTorch reference."""
from __future__ import annotations


import pytest
import torch
from torch.library import opcheck

from fastseg import ops
from fastseg.ops.gaussian_center_distance import GAUSSIAN_CENTER_DISTANCE, gaussian_center_distance_reference

DELTA = 10.0


def _inputs(batch, channels, height, width, num_classes, at_center=0.1):
    """Embeddings ~ N(0, 1); centers are embeddings of random pixels plus noise, so that some pixels
    are close to a center (phi ~ 0) and others far (phi ~ 1); margins in [-0.5, 0.5], so the scale
    exp(10 m) spans e^-5 .. e^5. A fraction ``at_center`` of the pixels equals its image's first
    center exactly (phi = 0 there)."""
    embeddings = torch.randn(batch, channels, height, width)
    flat = embeddings.flatten(2)
    picks = torch.randint(0, height * width, (batch, num_classes))
    centers = torch.gather(flat, 2, picks[:, None, :].expand(-1, channels, -1)).transpose(1, 2)
    centers = centers + 0.3 * torch.randn_like(centers)
    margins = torch.rand(batch, num_classes) - 0.5
    exact = torch.rand(batch, height * width) < at_center
    flat.transpose(1, 2)[exact] = centers[:, :1].expand(-1, height * width, -1)[exact]
    return embeddings, centers, margins


def _compare(backend, device, embeddings, centers, margins, dtype=torch.float32, tolerance=1e-5):
    """Values and all three gradients against the float64 reference, to `tolerance` relative to
    each tensor's largest magnitude (the gradients of centers and margins are sums over pixels)."""
    inputs = [t.to(device=device, dtype=dtype).requires_grad_() for t in (embeddings, centers, margins)]
    expected_inputs = [t.detach().double().requires_grad_() for t in inputs]
    phi = ops.gaussian_center_distance(*inputs, DELTA, backend=backend)
    expected = gaussian_center_distance_reference(*expected_inputs, DELTA)
    assert phi.dtype == dtype and phi.shape == expected.shape and phi.device == inputs[0].device
    grad = torch.randn_like(expected)
    grads = torch.autograd.grad(phi, inputs, grad.to(dtype))
    expected_grads = torch.autograd.grad(expected, expected_inputs, grad)
    for name, actual, wanted in zip(("phi", "embeddings", "centers", "margins"), (phi, *grads), (expected, *expected_grads)):
        assert actual.dtype == dtype and actual.shape == wanted.shape, name
        assert torch.isfinite(actual).all(), name
        scale = wanted.abs().max().item() if wanted.numel() else 1.0
        torch.testing.assert_close(actual.double(), wanted, atol=tolerance * scale, rtol=tolerance, msg=name)
    return phi


CASES = {
    # name: (B, C', H, W, K)
    "cityscapes-like": (2, 16, 7, 9, 19),
    "batch1": (1, 8, 9, 9, 5),
    "one-pixel": (2, 5, 1, 1, 4),
    "one-class": (2, 6, 7, 9, 1),
    "many-classes": (2, 4, 10, 12, 40),
    "many-pixels": (1, 2, 33, 130, 2),  # > 64 CPU tiles: chunks of several tiles
}


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(fused, case):
    backend, device = fused
    _compare(backend, device, *_inputs(*CASES[case]))


def test_zero_at_the_center(fused):
    backend, device = fused
    embeddings, centers, margins = _inputs(2, 7, 6, 8, 5, at_center=0.0)
    embeddings[:, :, 2, 3] = centers[:, 1]
    phi = _compare(backend, device, embeddings, centers, margins)
    assert torch.all(phi[:, 1, 2, 3] == 0)
    assert torch.all(phi[:, 1].flatten(1).sum(1) > 0)


def test_huge_margins_stay_finite(fused):
    """Scales beyond exp(60) are clamped identically everywhere: phi is 0 at the center, 1 elsewhere,
    and no gradient is NaN (the reference agrees, in float64 where exp(1000) would overflow)."""
    backend, device = fused
    embeddings, centers, margins = _inputs(2, 4, 5, 6, 4, at_center=0.2)
    margins[:, 0] = 100.0
    margins[:, 1] = 20.0
    phi = _compare(backend, device, embeddings, centers, margins)
    exact = (embeddings - centers[:, 0, :, None, None]).abs().amax(1) == 0
    assert exact.any()
    assert torch.all(phi[:, 0][exact.to(device)] == 0) and torch.all(phi[:, 0][~exact.to(device)] == 1)


def test_non_contiguous_and_channels_last(fused):
    backend, device = fused
    embeddings, centers, margins = _inputs(2, 9, 12, 10, 6)
    sliced = embeddings.transpose(2, 3)[:, :, :7]  # (2, 9, 7, 12) non-contiguous view
    assert not sliced.is_contiguous()
    _compare(backend, device, sliced, centers, margins[:, :6].t().contiguous().t())
    _compare(backend, device, embeddings.contiguous(memory_format=torch.channels_last), centers, margins)


def test_float64_and_low_precision(fused):
    backend, device = fused
    embeddings, centers, margins = _inputs(2, 12, 8, 9, 7)
    _compare(backend, device, embeddings, centers, margins, dtype=torch.float64, tolerance=1e-10)
    for dtype in (torch.float16, torch.bfloat16):
        # inputs rounded to the low precision; fp32 accumulation, one rounding of each output
        rounded = [t.to(dtype).double() for t in (embeddings, centers, margins)]
        _compare(backend, device, *rounded, dtype=dtype, tolerance=2e-2)


def test_backward_is_deterministic(fused):
    backend, device = fused
    inputs = [t.to(device).requires_grad_() for t in _inputs(2, 8, 10, 12, 19)]
    grad = torch.randn(2, 19, 10, 12, device=device)
    first = torch.autograd.grad(ops.gaussian_center_distance(*inputs, backend=backend), inputs, grad)
    second = torch.autograd.grad(ops.gaussian_center_distance(*inputs, backend=backend), inputs, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cpu_backward_independent_of_thread_count():
    """The C++ kernels reduce fixed pixel chunks in a fixed order, whatever the number of threads."""
    if not ops.build_info()["loaded"]:
        pytest.skip("fastseg._C is not usable: " + ops.build_info()["reason"])
    inputs = [t.requires_grad_() for t in _inputs(2, 4, 70, 70, 5)]
    grad = torch.randn(2, 5, 70, 70)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(torch.autograd.grad(ops.gaussian_center_distance(*inputs, backend="cpu"), inputs, grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_gradcheck(differentiable):
    backend, device = differentiable
    inputs = [t.to(device=device, dtype=torch.float64).requires_grad_() for t in _inputs(2, 2, 2, 3, 2, at_center=0.2)]
    assert torch.autograd.gradcheck(
        lambda x, s, m: ops.gaussian_center_distance(x, s, m, DELTA, backend=backend), inputs
    )


def test_opcheck(fused):
    backend, device = fused
    inputs = [t.to(device).requires_grad_() for t in _inputs(1, 3, 4, 5, 3)]
    opcheck(GAUSSIAN_CENTER_DISTANCE.pair(backend).forward, (*inputs, DELTA))


def test_compile_fullgraph_matches_eager(fused):
    backend, device = fused
    inputs = [t.to(device).requires_grad_() for t in _inputs(2, 8, 9, 10, 5)]

    def loss(x, s, m):
        phi = ops.gaussian_center_distance(torch.tanh(x), s, m, backend=backend)
        return (phi * torch.linspace(-1, 1, 5, device=device)[:, None, None]).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(*inputs)
    eager_grads = torch.autograd.grad(eager_value, inputs)
    value = compiled(*inputs)
    grads = torch.autograd.grad(value, inputs)
    torch.testing.assert_close(value, eager_value)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad)


def _bad(embeddings=(2, 3, 4, 5), centers=(2, 6, 3), margins=(2, 6)):
    return [torch.randn(shape) if isinstance(shape, tuple) else shape for shape in (embeddings, centers, margins)]


@pytest.mark.parametrize(
    "inputs, message",
    [
        (_bad(centers=(3, 6, 3)), "centers batch size"),
        (_bad(margins=(1, 6)), "margins batch size"),
        (_bad(centers=(2, 6, 4)), r"centers channels \(C'\)"),
        (_bad(margins=(2, 5)), r"margins classes \(K\)"),
        (_bad(embeddings=torch.randint(0, 3, (2, 3, 4, 5))), "embeddings must be a floating"),
        (_bad(centers=torch.randint(0, 3, (2, 6, 3))), "centers must be a floating"),
        (_bad(margins=torch.zeros(2, 6, dtype=torch.long)), "margins must be a floating"),
        (_bad(embeddings=(3, 4, 5)), "embeddings must have 4 dimensions"),
        (_bad(centers=(2, 18)), "centers must have 3 dimensions"),
        (_bad(margins=(2, 6, 1)), "margins must have 2 dimensions"),
        (_bad(margins=torch.zeros(2, 6, device="meta")), "margins is on meta"),
        (_bad(centers=torch.zeros(2, 6, 3, device="meta")), "centers is on meta"),
    ],
)
def test_bad_input_names_the_argument(inputs, message):
    with pytest.raises(ValueError, match=message):
        ops.gaussian_center_distance(*inputs)


def test_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        ops.gaussian_center_distance(*_bad(), float("nan"))


def test_module_matches_function():
    module = ops.GaussianCenterDistance(delta=5.0)
    inputs = _inputs(2, 4, 6, 7, 3)
    torch.testing.assert_close(module(*inputs), gaussian_center_distance_reference(*inputs, 5.0))
    assert "delta=5.0" in repr(module)
