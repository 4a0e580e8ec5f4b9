"""lovasz_hinge forward+backward: fused backends vs the per-row and the vectorised reference.

Rows are CSFRNet's (image, class) pairs, K = 19 Cityscapes classes: rows of the 97x97 output of a
769 crop at stride 8 (batch 8 on GPU, 2 on CPU), and rows of full 769x769 crops at batch 2 on GPU.
On CPU, where the references take seconds per step at 769x769, the second group has rows of
193x193 (stride 4) and leaves out the per-row reference. "reference" is the vectorised reference
in eager mode, "reference-compiled" the same under torch.compile, and the per-row reference is
the loop of Berman et al.'s code.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import DEVICE, ON_GPU, run_benchmark
from fastseg import ops

CLASSES = 19
SHAPES = {
    "97x97": ((8 if ON_GPU else 2) * CLASSES, 97 * 97),
    "769x769" if ON_GPU else "193x193": (2 * CLASSES, 769 * 769 if ON_GPU else 193 * 193),
}


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    return torch.compile(ops.lovasz_hinge_reference)


def _rows(rows, pixels):
    """Embedding-distance-like scores in [-1, 1], about 1/19 positives, 10% ignored pixels."""
    logits = (2 * torch.rand(rows, pixels, device=DEVICE) - 1).requires_grad_()
    labels = torch.rand(rows, pixels, device=DEVICE) < 1 / CLASSES
    valid = torch.rand(rows, pixels, device=DEVICE) >= 0.1
    return logits, labels, valid


def _bench(benchmark, forward, shape):
    rows, pixels = SHAPES[shape]
    logits, labels, valid = _rows(rows, pixels)
    grad = torch.randn(rows, device=DEVICE)

    def step():
        logits.grad = None
        forward(logits, labels, valid).backward(grad)

    # forward reads logits, labels, valid and writes the float32 weights (in pixel order); backward
    # reads them and writes grad_logits (the sort's own passes come on top)
    bytes_moved = rows * pixels * (logits.element_size() * 2 + 2 + 2 * 4)
    run_benchmark(benchmark, step, group=f"lovasz_hinge {shape} N={rows} fwd+bwd", bytes_moved=bytes_moved)


@pytest.mark.parametrize("shape", SHAPES)
def test_lovasz_hinge(benchmark, implementation, shape):
    if implementation == "reference-compiled":
        forward = _compiled_reference()
    else:
        forward = functools.partial(ops.lovasz_hinge, backend=implementation)
    _bench(benchmark, forward, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_lovasz_hinge_per_row_reference(benchmark, shape):
    if shape == "193x193":
        pytest.skip("the per-row reference takes seconds per step on CPU beyond 97x97")
    _bench(benchmark, ops.lovasz_hinge_per_row, shape)
