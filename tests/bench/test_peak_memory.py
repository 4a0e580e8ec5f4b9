"""bench/peak_memory.py on CPU: the profiler peak of a step whose allocations are known."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from peak_memory import peak_memory, tensor_bytes  # noqa: E402


def test_tensor_bytes_counts_shared_storage_once():
    base = torch.randn(1000)
    assert tensor_bytes([base, base[10:], base.view(10, 100), torch.randn(5)]) == 4000 + 20


def test_cpu_peak_is_live_bytes_plus_the_step_high_water_mark():
    sizes = [random.randint(2**18, 2**20) for _ in range(3)]
    live = [torch.randn(4096)]

    def step():
        first = torch.rand(sizes[0])
        second = torch.rand(sizes[1])  # peak: first + second live together
        del first, second
        third = torch.rand(sizes[2])
        return third.sum()

    peak, method = peak_memory(step, torch.device("cpu"), lambda: live)
    expected = 4 * 4096 + 4 * max(sizes[0] + sizes[1], sizes[2])
    assert "profiler" in method
    # the scalars the step makes (sum) may add a few bytes of their own
    assert expected <= peak <= expected + 4096, (peak, expected)


def test_cpu_peak_is_the_same_on_every_call_when_release_frees_what_the_step_keeps():
    """Like a training step: the step leaves new "gradients" behind, release() drops the old ones."""
    size = random.randint(2**18, 2**20)
    kept = {}

    def step():
        scratch = torch.rand(2 * size)
        kept["grad"] = torch.rand(size)
        return scratch.sum()

    def release():
        kept.pop("grad", None)

    step()
    peaks = [peak_memory(step, torch.device("cpu"), lambda: [], release)[0] for _ in range(3)]
    assert peaks[0] == peaks[1] == peaks[2]
    assert 3 * 4 * size <= peaks[0] <= 3 * 4 * size + 4096, peaks
