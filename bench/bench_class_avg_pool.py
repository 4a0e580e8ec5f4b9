"""class_avg_pool forward+backward: fused backends vs the reference (eager and torch.compile).

Shapes (CSFRNet, Cityscapes 769 crop at output stride 8 -> 97x97, K = 19): C = 512 backbone
features and C' = 32 embeddings; ADE20K K = 150 at 64x64. Batch 8 on GPU, 2 on CPU.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, ON_GPU, run_benchmark
from fastseg import ops

BATCH = 8 if ON_GPU else 2
SHAPES = {
    "cityscapes-C512": (BATCH, 512, 97, 19),
    "cityscapes-C32": (BATCH, 32, 97, 19),
    "ade20k-C512": (BATCH, 512, 64, 150),
}


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    return torch.compile(ops.class_avg_pool_reference)


def _labels(batch, size, num_classes):
    """Piecewise-constant regions as in real label maps, 10% ignored."""
    coarse = torch.randint(0, num_classes, (batch, 1, 16, 16)).float()
    labels = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    labels[torch.rand(labels.shape) < 0.1] = 255
    return labels.to(DEVICE)


@pytest.mark.parametrize("shape", SHAPES)
def test_class_avg_pool(benchmark, implementation, shape):
    batch, channels, size, num_classes = SHAPES[shape]
    features = torch.randn(batch, channels, size, size, device=DEVICE, requires_grad=True)
    labels = _labels(batch, size, num_classes)
    grad = torch.randn(batch, num_classes, channels, device=DEVICE)
    if implementation == "reference-compiled":
        forward = functools.partial(_compiled_reference(), num_classes=num_classes)
    else:
        forward = functools.partial(ops.class_avg_pool, num_classes=num_classes, backend=implementation)

    def step():
        features.grad = None
        centers, _ = forward(features, labels)
        centers.backward(grad)

    element = features.element_size()
    # forward reads features + labels; backward writes grad_features and reads labels again
    bytes_moved = 2 * features.numel() * element + 2 * labels.numel() * 8
    run_benchmark(benchmark, step, group=f"class_avg_pool {shape} B={batch} fwd+bwd", bytes_moved=bytes_moved)
