"""lovasz_softmax: every backend against the readable per-image, per-class reference.

The fused version runs each class as one Lovász-hinge row on shifted logits; the reference sorts
``|fg - p|`` itself, so agreement also checks that rewriting. Probabilities are random float64
softmax outputs, so no two errors of a row tie (see test_lovasz_hinge.py on why ties matter
for gradients only).
"""
from __future__ import annotations

import pytest
import torch

from fastseg import ops
from fastseg.losses import LovaszSoftmaxLoss
from fastseg.ops.lovasz_softmax import lovasz_softmax_reference

IGNORE = 255


def _inputs(batch, classes, height, width, present=None, ignored=0.2, dtype=torch.float64):
    """Softmax probabilities and labels drawn from the first `present` classes, with ignored pixels."""
    probs = torch.randn(batch, classes, height, width, dtype=torch.float64).mul(2).softmax(1).to(dtype)
    labels = torch.randint(0, present or classes, (batch, height, width))
    labels[torch.rand(batch, height, width) < ignored] = IGNORE
    return probs, labels


def _compare(backend, device, probs, labels, dtype=torch.float64, atol=1e-10, rtol=1e-10, **kwargs):
    p = probs.to(device=device, dtype=dtype).requires_grad_()
    expected_p = probs.detach().double().requires_grad_()
    loss = ops.lovasz_softmax(p, labels.to(device), backend=backend, ignore_index=IGNORE, **kwargs)
    expected = lovasz_softmax_reference(expected_p, labels, ignore_index=IGNORE, **kwargs)
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss.double().cpu(), expected, atol=atol, rtol=rtol)
    if dtype == torch.float64:
        (grad,) = torch.autograd.grad(loss, p)
        (expected_grad,) = torch.autograd.grad(expected, expected_p)
        torch.testing.assert_close(grad.cpu(), expected_grad, atol=atol, rtol=rtol)


CLASSES = {"present": "present", "all": "all", "list": [0, 3, 5]}


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
@pytest.mark.parametrize("classes", CLASSES)
def test_matches_reference(fused, classes, per_image):
    backend, device = fused
    probs, labels = _inputs(3, 6, 9, 11, present=4)  # classes 4 and 5 absent
    labels[2] = IGNORE  # one image without any valid pixel
    _compare(backend, device, probs, labels, classes=CLASSES[classes], per_image=per_image)


@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per-image"])
@pytest.mark.parametrize("classes", CLASSES)
def test_reference_backend_matches_reference(classes, per_image):
    probs, labels = _inputs(2, 6, 7, 8, present=5)
    _compare("reference", "cpu", probs, labels, classes=CLASSES[classes], per_image=per_image)


def test_float32_and_half(fused):
    backend, device = fused
    probs, labels = _inputs(2, 5, 12, 10)
    _compare(backend, device, probs.float(), labels, dtype=torch.float32, atol=1e-5, rtol=1e-5)
    # fp16 probabilities are shifted and scanned in fp32: only the input and output roundings
    _compare(backend, device, probs.half().double(), labels, dtype=torch.float16, atol=2e-3, rtol=2e-3)


def test_channels_last_and_batch1(fused):
    backend, device = fused
    probs, labels = _inputs(1, 5, 8, 9)
    channels_last = probs.to(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    _compare(backend, device, channels_last, labels)
    _compare(backend, device, channels_last, labels, per_image=True)


def test_nothing_present_gives_zero(fused):
    backend, device = fused
    probs, labels = _inputs(2, 4, 5, 5)
    labels[:] = IGNORE
    p = probs.to(device).requires_grad_()
    loss = ops.lovasz_softmax(p, labels.to(device), backend=backend)
    loss.backward()
    assert loss.item() == 0 and torch.all(p.grad == 0)


def test_gradcheck(differentiable):
    backend, device = differentiable
    probs, labels = _inputs(2, 3, 3, 4)
    probs = probs.to(device).requires_grad_()
    labels = labels.to(device)
    for per_image in (False, True):
        # fast mode (random directional derivatives): the row op itself gets the full gradcheck
        # in test_lovasz_hinge.py, this checks the class averaging around it
        assert torch.autograd.gradcheck(
            lambda p: ops.lovasz_softmax(p, labels, per_image=per_image, backend=backend), (probs,), fast_mode=True
        )


def test_compile_fullgraph_matches_eager(fused):
    """No host synchronisation: the whole loss, class averaging included, traces as one graph."""
    backend, device = fused
    scores = torch.randn(2, 5, 6, 7, device=device, requires_grad=True)
    labels = _inputs(2, 5, 6, 7, present=3)[1].to(device)

    def loss(x):
        return ops.lovasz_softmax(x.softmax(1), labels, per_image=True, backend=backend)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(scores)
    (eager_grad,) = torch.autograd.grad(eager_value, scores)
    value = compiled(scores)
    (grad,) = torch.autograd.grad(value, scores)
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grad, eager_grad)


def test_module_matches_function():
    probs, labels = _inputs(2, 4, 6, 6)
    module = LovaszSoftmaxLoss(classes=[1, 2], per_image=True)
    expected = lovasz_softmax_reference(probs, labels, classes=[1, 2], per_image=True)
    torch.testing.assert_close(module(probs, labels), expected)
    assert "per_image=True" in repr(module)


_P = torch.rand(2, 4, 5, 6)
_L = torch.zeros(2, 5, 6, dtype=torch.long)


@pytest.mark.parametrize(
    "probs, labels, classes, message",
    [
        (_P, torch.zeros(3, 5, 6, dtype=torch.long), "present", "labels batch size"),
        (_P, torch.zeros(2, 5, 7, dtype=torch.long), "present", "labels spatial size"),
        (_P, torch.full((2, 5, 6), 4), "present", "outside"),
        (_P, _L.float(), "present", "labels must be an integer"),
        (_P.long(), _L, "present", "probs must be a floating"),
        (_P[0], _L, "present", "probs must have 4 dimensions"),
        (_P, _L.to("meta"), "present", "labels is on meta"),
        (_P, _L, "some", "classes must be"),
        (_P, _L, [0, 4], "classes must be"),
        (_P, _L, [], "classes must be"),
    ],
)
def test_bad_input_names_the_argument(probs, labels, classes, message):
    with pytest.raises(ValueError, match=message):
        ops.lovasz_softmax(probs, labels, classes)
