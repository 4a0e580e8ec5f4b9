"""soft_class_pool and attentional_class_feature forward+backward: fused backends vs the reference.

Shapes (ACFNet, Cityscapes 769 crop at output stride 8 -> 97x97, K = 19, C = 512 backbone features;
ADE20K K = 150 at 64x64). Batch 8 on GPU, 2 on CPU. Gradients flow to both features and probs.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import DEVICE, ON_GPU, run_benchmark
from fastseg import ops

BATCH = 8 if ON_GPU else 2
SHAPES = {
    "cityscapes-C512": (BATCH, 512, 97, 19),
    "ade20k-C512": (BATCH, 512, 64, 150),
}
FUNCTIONS = {
    "soft_class_pool": (ops.soft_class_pool, ops.soft_class_pool_reference),
    "attentional_class_feature": (ops.attentional_class_feature, ops.attentional_class_feature_reference),
}


@functools.lru_cache(maxsize=None)
def _compiled(reference):
    return torch.compile(reference)


def _cost(function, batch, channels, pixels, num_classes, element):
    """(bytes, flops) an implementation must at least move and compute, forward+backward."""
    gemm = 2 * batch * num_classes * channels * pixels
    if function == "soft_class_pool":
        # reads features and probs twice, writes their gradients; one GEMM forward, two backward
        return 3 * batch * pixels * (channels + num_classes) * element, 3 * gemm
    # forward reads features, probs and writes the output; backward reads its gradient, features and
    # probs and writes their gradients; two GEMMs forward, four backward
    return batch * pixels * (5 * channels + 3 * num_classes) * element, 6 * gemm


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_soft_class_pool(benchmark, implementation, function, shape):
    batch, channels, size, num_classes = SHAPES[shape]
    features = torch.randn(batch, channels, size, size, device=DEVICE, requires_grad=True)
    logits = 3 * torch.randn(batch, num_classes, size, size, device=DEVICE)
    probs = logits.softmax(dim=1).requires_grad_()
    fused, reference = FUNCTIONS[function]
    if implementation == "reference-compiled":
        forward = _compiled(reference)
    else:
        forward = functools.partial(fused, backend=implementation)
    out = forward(features, probs)
    grad = torch.randn_like(out)

    def step():
        features.grad = None
        probs.grad = None
        forward(features, probs).backward(grad)

    bytes_moved, flops = _cost(function, batch, channels, size * size, num_classes, features.element_size())
    run_benchmark(benchmark, step, group=f"{function} {shape} B={batch} fwd+bwd", bytes_moved=bytes_moved, flops=flops)
