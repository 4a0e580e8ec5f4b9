"""gaussian_center_distance forward+backward: fused backends vs the reference (eager and torch.compile).

Shapes (CSFRNet, Cityscapes 769 crop at output stride 8 -> 97x97, C' = 32 embeddings, K = 19;
ADE20K K = 150 at 64x64). Batch 8 on GPU, 2 on CPU.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import DEVICE, ON_GPU, run_benchmark
from fastseg import ops

BATCH = 8 if ON_GPU else 2
SHAPES = {
    # name: (B, C', size, K)
    "cityscapes-C32": (BATCH, 32, 97, 19),
    "ade20k-C32": (BATCH, 32, 64, 150),
}


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    return torch.compile(ops.gaussian_center_distance_reference)


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_center_distance(benchmark, implementation, shape):
    batch, channels, size, num_classes = SHAPES[shape]
    embeddings = torch.randn(batch, channels, size, size, device=DEVICE, requires_grad=True)
    centers = torch.randn(batch, num_classes, channels, device=DEVICE, requires_grad=True)
    margins = (torch.rand(batch, num_classes, device=DEVICE) - 0.5).requires_grad_()
    grad = torch.randn(batch, num_classes, size, size, device=DEVICE)
    if implementation == "reference-compiled":
        forward = _compiled_reference()
    else:
        forward = functools.partial(ops.gaussian_center_distance, backend=implementation)

    def step():
        for tensor in (embeddings, centers, margins):
            tensor.grad = None
        forward(embeddings, centers, margins).backward(grad)

    element = embeddings.element_size()
    phi_bytes = batch * num_classes * size * size * element
    # forward reads embeddings, writes phi; backward reads embeddings and grad_phi, writes grad_embeddings
    bytes_moved = 3 * embeddings.numel() * element + 2 * phi_bytes
    # per (pixel, class, channel): 3 flops for the distance in each pass, 3 more for the gradients
    flops = 9 * batch * num_classes * channels * size * size
    run_benchmark(benchmark, step, group=f"gaussian_center_distance {shape} B={batch} fwd+bwd",
                  bytes_moved=bytes_moved, flops=flops)
