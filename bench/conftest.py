"""Shared pieces of the op benchmarks (pytest-benchmark).

Run: ``pytest bench --benchmark-only --benchmark-json bench/results/<name>.json``. Each op file
benchmarks forward+backward of every implementation on one device (CUDA when present, else CPU),
at the papers' shapes on GPU and smaller batches on CPU. ``extra_info`` records the bytes an
implementation must at least move, so reports can express times as a fraction of the bandwidth floor.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import time

import pytest
import torch

from fastseg.ops import backend as op_backend
from fastseg.ops import extension

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# the longest an op case takes on a GPU, compilation of the reference included (for FASTSEG_BENCH_DEADLINE)
OP_CASE_SECONDS = 60.0

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


def deadline_reason(needed_seconds: float) -> str | None:
    """Why a case that may need ``needed_seconds`` must not start before FASTSEG_BENCH_DEADLINE (Unix
    time; a GPU session sets it to end in its time budget), or None."""
    deadline = os.environ.get("FASTSEG_BENCH_DEADLINE")
    if not deadline:
        return None
    left = float(deadline) - time.time()
    if left >= needed_seconds:
        return None
    return f"FASTSEG_BENCH_DEADLINE: {left:.0f} s left, the case may need {needed_seconds:.0f} s"


def device_name() -> str:
    """The benchmarked device: the GPU's name, or the CPU with the threads torch uses."""
    return torch.cuda.get_device_name() if ON_GPU else f"cpu x{torch.get_num_threads()} threads"


def run_benchmark(benchmark, step, *, group: str, bytes_moved: int, flops: int = 0) -> None:
    """Time ``step`` (which runs forward+backward once) with device synchronisation."""
    reason = deadline_reason(OP_CASE_SECONDS)
    if reason:
        pytest.skip(reason)
    benchmark.group = group
    benchmark.extra_info.update(
        device=device_name(),
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


def _versions() -> dict:
    """Device, library versions, date and commit of this run (stored in the result file's machine_info)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    return {
        "device": device_name(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if ON_GPU else None,
        "fastseg_build": extension.build_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "commit": commit.stdout.strip() or None,
    }


def _attainable_rates() -> dict:
    """Measured copy bandwidth (bytes/s) and fp32 matmul rate (FLOP/s) of DEVICE, the best of a few runs.

    The report uses them as the floor's denominators where it has no datasheet figures for the device.
    """
    import time

    def best_seconds(fn, repeats=5):
        fn()
        synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    source = torch.empty(64 * 2**20, device=DEVICE)  # 256 MiB
    target = torch.empty_like(source)
    copy = best_seconds(lambda: target.copy_(source))
    n = 4096 if ON_GPU else 1024
    a = torch.randn(n, n, device=DEVICE)
    b = torch.randn(n, n, device=DEVICE)
    matmul = best_seconds(lambda: a @ b)
    return {"copy_bytes_per_s": 2 * source.numel() * 4 / copy, "fp32_matmul_flops_per_s": 2 * n**3 / matmul}


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what a report needs to say where and with what the results were measured."""
    machine_info["fastseg"] = {**_versions(), "measured": _attainable_rates()}
