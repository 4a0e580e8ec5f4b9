"""lovasz_hinge: every fused backend and the (vectorised) reference against the per-row loop.

Ties: the Lovász extension is well defined, so the loss does not depend on how equal errors are
ordered, but its gradient does (two tied pixels with different labels swap their Jaccard-gradient
weights, and every order is a valid subgradient). The per-row loop is compared on tie-free rows
(errors built from distinct dyadic numbers, exact in float32); every fused backend and the vectorised
reference sort stably (ties in pixel order), so on rows with many ties their gradients must agree.
"""
from __future__ import annotations


import pytest
import torch
from torch.library import opcheck

from fastseg import ops
from fastseg.losses import LovaszHingeLoss
from fastseg.ops import extension
from fastseg.ops.lovasz_hinge import LOVASZ_HINGE, lovasz_hinge_per_row, lovasz_hinge_reference


def _tie_free_rows(rows, pixels, positive=0.3, valid=0.8, device="cpu", dtype=torch.float32):
    """logits, labels, valid of (rows, pixels) whose hinge errors are distinct within each row.

    Errors are distinct half-integers times a power of two, in about [-1.3, 2.7), so that
    ``1 - logits * sign`` gives them back exactly; about a third of them are negative (no loss).
    """
    scale = 4.0 / 2 ** max(1, (pixels - 1).bit_length())
    errors = torch.stack([torch.randperm(pixels) for _ in range(rows)]).double() - pixels / 3
    errors = (errors.round() + 0.5) * scale  # never exactly 0, the kink of relu
    labels = torch.rand(rows, pixels) < positive
    logits = (1 - errors) * (2 * labels.double() - 1)
    mask = torch.rand(rows, pixels) < valid
    return logits.to(device=device, dtype=dtype), labels.to(device), mask.to(device)


CASES = {
    # name: (rows, pixels, fraction positive, fraction valid)
    "random": (7, 300, 0.3, 0.8),
    "all-positive": (3, 50, 1.0, 0.9),
    "all-negative": (3, 50, 0.0, 0.9),
    "all-valid": (4, 64, 0.5, 1.0),
    "one-pixel": (5, 1, 0.5, 1.0),
    "one-row": (1, 2000, 0.2, 0.7),
    "long": (2, 5000, 0.1, 0.9),
    "no-pixels": (3, 0, 0.5, 1.0),  # every row's loss is 0, from no scan at all
}


def _compare(backend, device, logits, labels, valid, dtype=torch.float32, atol=1e-5, rtol=1e-5, grads=True):
    x = logits.to(device=device, dtype=dtype).requires_grad_()
    expected_x = logits.detach().double().requires_grad_()
    losses = ops.lovasz_hinge(x, labels.to(device), None if valid is None else valid.to(device), backend=backend)
    expected = lovasz_hinge_per_row(expected_x, labels, valid)
    assert losses.dtype == dtype and losses.shape == (logits.shape[0],)
    torch.testing.assert_close(losses.double().cpu(), expected, atol=atol, rtol=rtol)
    if grads:
        weights = torch.randn_like(expected)
        (grad,) = torch.autograd.grad(losses, x, weights.to(device=device, dtype=dtype))
        (expected_grad,) = torch.autograd.grad(expected, expected_x, weights)
        torch.testing.assert_close(grad.double().cpu(), expected_grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(fused, case):
    backend, device = fused
    rows, pixels, positive, valid = CASES[case]
    logits, labels, mask = _tie_free_rows(rows, pixels, positive, valid)
    _compare(backend, device, logits, labels, mask)
    _compare(backend, device, logits, labels, None)


@pytest.mark.parametrize("case", CASES)
def test_vectorized_reference_matches_per_row(case):
    rows, pixels, positive, valid = CASES[case]
    logits, labels, mask = _tie_free_rows(rows, pixels, positive, valid, dtype=torch.float64)
    _compare("reference", torch.device("cpu"), logits, labels, mask, dtype=torch.float64, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lovasz_hinge_reference(logits, labels, mask), lovasz_hinge_per_row(logits, labels, mask))


def test_ties_give_the_reference_loss(fused):
    """Many equal errors per row: the loss is order independent, so it must match exactly."""
    backend, device = fused
    logits = torch.randint(-3, 4, (6, 400)).float() / 2
    labels = torch.rand(6, 400) < 0.4
    mask = torch.rand(6, 400) < 0.85
    _compare(backend, device, logits, labels, mask, grads=False)
    _compare("reference", torch.device("cpu"), logits, labels, mask, grads=False)


def _tied_rows(rows, pixels, dtype, device):
    """logits on 7 values in [-1.5, 1.5] (many equal errors per row, some exactly 0), labels, 20% invalid."""
    logits = torch.randint(-3, 4, (rows, pixels)).to(dtype) / 2
    labels = torch.rand(rows, pixels) < 0.4
    mask = torch.rand(rows, pixels) < 0.8
    return logits.to(device), labels.to(device), mask.to(device)


def _reference_gradient(logits, labels, valid, grad_loss):
    x = logits.detach().clone().requires_grad_()
    return torch.autograd.grad(lovasz_hinge_reference(x, labels, valid), x, grad_loss)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_gradients_with_ties_match_the_reference(fused, dtype):
    """Tied rows with invalid pixels: the fused gradient is torch.autograd's on lovasz_hinge_reference."""
    backend, device = fused
    logits, labels, mask = _tied_rows(5, 700, dtype, device)
    grad_loss = torch.randn(5, device=device).to(dtype)
    flipped = _reference_gradient(logits.flip(1), labels.flip(1), mask.flip(1), grad_loss).flip(1)
    assert not torch.equal(flipped, _reference_gradient(logits, labels, mask, grad_loss)), "rows are tie-sensitive"
    for valid in (mask, None):
        x = logits.clone().requires_grad_()
        (grad,) = torch.autograd.grad(ops.lovasz_hinge(x, labels, valid, backend=backend), x, grad_loss)
        assert grad.dtype == dtype and (valid is None or torch.all(grad[~valid] == 0))
        torch.testing.assert_close(grad, _reference_gradient(logits, labels, valid, grad_loss))


def _rounded(values, dtype, backend, device):
    """float32 values in dtype as the backend rounds them: the Triton interpreter truncates float32 to
    bfloat16 (cast_impl in triton/runtime/interpreter.py); compiled kernels round to nearest even."""
    if dtype == torch.bfloat16 and backend == "triton" and device.type == "cpu":
        return (values.view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return values.to(dtype)


def test_forward_weights_are_the_gradient_in_pixel_order(fused):
    """The raw ops: weights[n, p] = d losses[n] / d logits[n, p]; backward is grad_loss[:, None] * weights."""
    backend, device = fused
    logits, labels, mask = _tied_rows(4, 1500, torch.float32, device)
    pair = LOVASZ_HINGE.pair(backend)
    losses, weights = pair.forward(logits, labels, mask)
    assert weights.dtype == torch.float32 and weights.shape == logits.shape
    torch.testing.assert_close(losses, lovasz_hinge_reference(logits, labels, mask))
    torch.testing.assert_close(weights, _reference_gradient(logits, labels, mask, torch.ones(4, device=device)))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        grad_loss = torch.randn(4, device=device).to(dtype)
        grad = pair.backward(grad_loss, weights)
        assert grad.dtype == dtype
        expected = _rounded(grad_loss.float()[:, None] * weights, dtype, backend, device)
        torch.testing.assert_close(grad, expected, atol=0, rtol=0)


@pytest.mark.skipif(not extension.available(), reason="the C++ extension is not built")
@pytest.mark.parametrize(
    "grad_loss, weights, message",
    [
        (torch.randn(2, 1), torch.randn(2, 5), "grad_loss must be"),
        (torch.randn(2), torch.randn(3, 5), "weights must be"),
        (torch.randn(2), torch.randn(2, 5, dtype=torch.float64), "weights must be"),
        (torch.randn(2), torch.randn(10), "weights must be"),
        (torch.ones(2, dtype=torch.int64), torch.randn(2, 5), "grad_loss must be floating"),
    ],
)
def test_raw_backward_checks_its_arguments(grad_loss, weights, message):
    with pytest.raises(ValueError, match=message):
        torch.ops.fastseg.lovasz_hinge_backward(grad_loss, weights)


def test_rows_without_valid_pixels_give_zero_loss_and_gradient(fused):
    backend, device = fused
    logits, labels, mask = _tie_free_rows(4, 30)
    mask[1] = False
    mask[3] = False
    x = logits.to(device).requires_grad_()
    losses = ops.lovasz_hinge(x, labels.to(device), mask.to(device), backend=backend)
    losses.sum().backward()
    assert torch.all(losses[[1, 3]] == 0) and torch.all(losses[[0, 2]] > 0)
    assert torch.all(x.grad[[1, 3]] == 0) and torch.all(x.grad[~mask.to(device)] == 0)
    _compare(backend, device, logits, labels, mask)


def test_long_rows_match_the_reference(fused):
    """Rows longer than many kernel chunks (the running counts carried across chunks)."""
    backend, device = fused
    logits, labels, mask = _tie_free_rows(2, 97 * 97 * 3, positive=0.05)
    _compare(backend, device, logits, labels, mask, atol=1e-5, rtol=1e-4)


def test_integer_labels_and_non_contiguous_logits(fused):
    backend, device = fused
    logits, labels, mask = _tie_free_rows(5, 40)
    strided = logits.t().contiguous().t()
    assert not strided.is_contiguous()
    int_labels = labels.to(torch.int64)
    int_labels[~mask] = 255  # outside {0, 1} is allowed where not valid
    losses = ops.lovasz_hinge(strided.to(device), int_labels.to(device), mask.to(device), backend=backend)
    torch.testing.assert_close(losses.cpu(), lovasz_hinge_per_row(logits, labels, mask))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(fused, dtype):
    backend, device = fused
    logits, labels, mask = _tie_free_rows(4, 200, dtype=dtype)
    if dtype == torch.float64:
        _compare(backend, device, logits.double(), labels, mask, dtype=dtype, atol=1e-12, rtol=1e-12)
        return
    # computed in fp32 from the rounded inputs, rounded once at the end; 200-pixel tie-free rows
    # stay tie-free in fp16 (9 significant bits), not in bf16 (8), so bf16 compares losses only
    _compare(backend, device, logits.float(), labels, mask, dtype=dtype, atol=2e-2, rtol=2e-2,
             grads=dtype == torch.float16)


def test_gradcheck(differentiable):
    backend, device = differentiable
    logits, labels, mask = _tie_free_rows(2, 9, dtype=torch.float64, device=device)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.lovasz_hinge(x, labels, mask, backend=backend), (logits,))


def test_opcheck(fused):
    backend, device = fused
    logits, labels, mask = _tie_free_rows(3, 37, device=device)
    opcheck(LOVASZ_HINGE.pair(backend).forward, (logits.requires_grad_(), labels, mask))
    opcheck(LOVASZ_HINGE.pair(backend).forward, (logits, labels, None))


def test_compile_fullgraph_matches_eager(fused):
    backend, device = fused
    logits, labels, mask = _tie_free_rows(4, 50, device=device)
    logits.requires_grad_()

    def loss(x):
        return (ops.lovasz_hinge(2 * torch.sigmoid(x) - 1, labels, mask, backend=backend) * torch.arange(1, 5)).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(logits)
    (eager_grad,) = torch.autograd.grad(eager_value, logits)
    value = compiled(logits)
    (grad,) = torch.autograd.grad(value, logits)
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grad, eager_grad)


def test_module_reduces_rows():
    logits, labels, mask = _tie_free_rows(3, 20)
    losses = lovasz_hinge_per_row(logits, labels, mask)
    torch.testing.assert_close(LovaszHingeLoss()(logits, labels, mask), losses.mean())
    torch.testing.assert_close(LovaszHingeLoss("sum")(logits, labels, mask), losses.sum())
    torch.testing.assert_close(LovaszHingeLoss("none")(logits, labels, mask), losses)
    with pytest.raises(ValueError, match="reduction"):
        LovaszHingeLoss("max")


_X = torch.randn(2, 5)
_Y = torch.ones(2, 5, dtype=torch.bool)


@pytest.mark.parametrize(
    "logits, labels, valid, message",
    [
        (_X, torch.ones(2, 4, dtype=torch.bool), None, "labels shape"),
        (_X, _Y, torch.ones(3, 5, dtype=torch.bool), "valid shape"),
        (_X, torch.full((2, 5), 2), None, "labels must be 0 or 1"),
        (_X, torch.full((2, 5), -1), None, "labels must be 0 or 1"),
        (_X.long(), _Y, None, "logits must be a floating"),
        (_X, _Y.float(), None, "labels must be a bool or integer"),
        (_X, _Y, torch.ones(2, 5, dtype=torch.int64), "valid must be a bool"),
        (_X[0], _Y[0], None, "logits must have 2 dimensions"),
        (_X, _Y.to("meta"), None, "labels is on meta"),
        (_X, _Y, torch.ones(2, 5, dtype=torch.bool, device="meta"), "valid is on meta"),
    ],
)
def test_bad_input_names_the_argument(logits, labels, valid, message):
    with pytest.raises(ValueError, match=message):
        ops.lovasz_hinge(logits, labels, valid)


@pytest.mark.cuda
def test_cuda_integer_labels_are_checked_without_a_host_sync():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    logits = torch.randn(4, 300, device="cuda")
    labels = torch.randint(0, 2, (4, 300), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        losses = ops.lovasz_hinge(logits, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = ops.lovasz_hinge(logits.cpu(), labels.cpu().bool(), backend="reference")
    torch.testing.assert_close(losses.cpu(), expected)
