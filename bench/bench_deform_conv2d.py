"""deform_conv2d forward+backward: fused backends vs the reference (eager and torch.compile) and torchvision.

Shapes (CSFRNet AAM, Eq. 6, Cityscapes 769 crop at output stride 8 -> 97x97, 3x3 kernel, modulated):
512 -> 512 (backbone features) and 32 -> 32 (C-S features), batch 8, on GPU; on CPU the 256 -> 256,
batch 2 case of the CPU target (1.5x faster than the reference). A smoke run (--benchmark-disable)
uses 33x33 images, so that it only proves the code runs.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import DEVICE, ON_GPU, run_benchmark
from fastseg import ops

SIZE = 97
SHAPES = (
    {"csfrnet-C512": (8, 512), "csfrnet-C32": (8, 32)}
    if ON_GPU
    else {"cpu-target-C256": (2, 256)}
)
SMOKE_SIZE = 33
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16} if ON_GPU else {"fp32": torch.float32}


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    return torch.compile(ops.deform_conv2d_reference)


def _torchvision():
    try:
        from torchvision.ops import deform_conv2d
    except ImportError:
        return None
    return deform_conv2d


def _forward(implementation):
    if implementation == "reference-compiled":
        return _compiled_reference()
    if implementation == "torchvision":
        return _torchvision()
    return functools.partial(ops.deform_conv2d, backend=implementation)


def _bench(benchmark, implementation, shape, dtype_name):
    batch, channels = SHAPES[shape]
    size = SMOKE_SIZE if benchmark.disabled else SIZE
    dtype = DTYPES[dtype_name]
    options = dict(device=DEVICE, dtype=dtype)
    taps = 9
    input = torch.randn(batch, channels, size, size, **options, requires_grad=True)
    offset = (2 * torch.randn(batch, 2 * taps, size, size, **options)).requires_grad_()
    mask = torch.rand(batch, taps, size, size, **options).requires_grad_()
    weight = (torch.randn(channels, channels, 3, 3, **options) / (3 * channels**0.5)).requires_grad_()
    bias = torch.randn(channels, **options, requires_grad=True)
    grad = torch.randn(batch, channels, size, size, **options)
    forward = _forward(implementation)
    tensors = (input, offset, weight, bias, mask)

    def step():
        for tensor in tensors:
            tensor.grad = None
        out = forward(input, offset, weight, bias, padding=(1, 1), mask=mask)
        out.backward(grad)

    element = input.element_size()
    pixels = batch * size * size
    # forward reads input, offset, mask, weight and writes output; backward reads them again and writes their grads
    bytes_moved = 2 * element * (2 * input.numel() + offset.numel() + mask.numel() + weight.numel() + grad.numel())
    flops = 3 * 2 * pixels * channels * channels * taps  # forward GEMM + two backward GEMMs
    run_benchmark(benchmark, step, group=f"deform_conv2d {shape} {dtype_name} B={batch} {size}x{size} fwd+bwd",
                  bytes_moved=bytes_moved, flops=flops)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_deform_conv2d(benchmark, implementation, shape, dtype_name):
    if implementation.startswith("reference") and dtype_name != "fp32":
        pytest.skip("the reference is timed in fp32 only")
    _bench(benchmark, implementation, shape, dtype_name)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_deform_conv2d_torchvision(benchmark, shape, dtype_name):
    if _torchvision() is None:
        pytest.skip("torchvision is not installed")
    _bench(benchmark, "torchvision", shape, dtype_name)
