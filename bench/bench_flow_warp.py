"""flow_warp forward+backward: fused backends vs the grid_sample path (eager and torch.compile).

Shapes (DecoupleSegNet, Cityscapes 832 crop): C = 256 ASPP features at output stride 8 (104x104)
and 4 (208x208), warped at the same size; SFNet-style alignment upsampling a 52x52 map to 104x104.
Batch 8 on GPU, 2 on CPU. The flow is a smooth field of a few pixels, as a trained flow head gives.
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
    # name: (B, C, Hi, Wi, Ho, Wo)
    "decouple-104": (BATCH, 256, 104, 104, 104, 104),
    "decouple-208": (BATCH, 256, 208, 208, 208, 208),
    "sfnet-52to104": (BATCH, 256, 52, 52, 104, 104),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16} if ON_GPU else {"fp32": torch.float32}


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    # dynamic: one compilation serves every shape (a second shape would make it dynamic anyway)
    return torch.compile(ops.flow_warp_reference, dynamic=True)


def _smooth_flow(batch, height, width):
    """A flow of a few pixels that varies smoothly (bilinearly upsampled 8x8 noise)."""
    coarse = 3 * torch.randn(batch, 2, 8, 8)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_flow_warp(benchmark, implementation, shape, dtype):
    batch, channels, in_h, in_w, out_h, out_w = SHAPES[shape]
    input = torch.randn(batch, channels, in_h, in_w, device=DEVICE, dtype=DTYPES[dtype], requires_grad=True)
    flow = _smooth_flow(batch, out_h, out_w).requires_grad_()
    grad = torch.randn(batch, channels, out_h, out_w, device=DEVICE, dtype=DTYPES[dtype])
    if implementation == "reference-compiled":
        forward = _compiled_reference()
    else:
        forward = functools.partial(ops.flow_warp, backend=implementation)

    def step():
        input.grad = None
        flow.grad = None
        forward(input, flow).backward(grad)

    element = input.element_size()
    # forward: read input and flow, write output; backward: read grad_output, input and flow,
    # write grad_input and grad_flow
    feature_bytes = (3 * input.numel() + 2 * grad.numel()) * element
    bytes_moved = feature_bytes + 4 * flow.numel() * flow.element_size()
    run_benchmark(benchmark, step, group=f"flow_warp {shape} {dtype} B={batch} fwd+bwd", bytes_moved=bytes_moved)
