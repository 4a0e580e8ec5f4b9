"""Shared pieces of the op benchmarks (pytest-benchmark).

Run: ``pytest bench --benchmark-only --benchmark-json bench/results/<name>.json``. Each op file
benchmarks forward+backward of every implementation on one device (CUDA when present, else CPU),
at the papers' shapes on GPU and smaller batches on CPU. ``extra_info`` records the bytes an
implementation must at least move, so reports can express times as a fraction of the bandwidth floor.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastseg.ops import backend as op_backend
from fastseg.ops import extension

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# Implementations compared in every op benchmark: the reference eager and compiled, then the fused backends.
IMPLEMENTATIONS = ["reference", "reference-compiled", DEVICE.type, "triton"]


def skip_reason(implementation: str) -> str | None:
    """Why an implementation cannot be benchmarked here, or None."""
    if implementation in ("cpu", "cuda") and not extension.available():
        return f"fastseg._C is not usable: {extension.unavailable_reason()}"
    if implementation == "cuda" and not extension.has_cuda():
        return "fastseg._C was built without CUDA"
    if implementation == "triton":
        if not ON_GPU:
            return "Triton on CPU runs only in the interpreter, which is a correctness tool, not a fast path"
        usable, reason = op_backend.triton_usable(DEVICE)
        if not usable:
            return reason
    return None


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def synchronize() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def run_benchmark(benchmark, step, *, group: str, bytes_moved: int, flops: int = 0) -> None:
    """Time ``step`` (which runs forward+backward once) with device synchronisation."""
    benchmark.group = group
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if ON_GPU else f"cpu x{torch.get_num_threads()} threads",
        torch=torch.__version__,
        bytes=bytes_moved,
        flops=flops,
        cpu_count=os.cpu_count(),
    )

    def timed():
        step()
        synchronize()

    timed()  # warm-up (compilation, autotuning, allocator)
    benchmark.pedantic(timed, rounds=5 if not ON_GPU else 30, iterations=1, warmup_rounds=1)
