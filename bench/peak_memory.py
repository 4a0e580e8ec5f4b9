"""Peak memory of one benchmark step, measured the same way on every run of a device type.

CUDA: ``torch.cuda.max_memory_allocated`` over one step after resetting the peak statistics: every
tensor live at the peak (weights, gradients, optimizer state, inputs, activations).
CPU: there is no allocator statistic, so one extra step runs under the profiler with
``profile_memory=True``; its allocation events give the highest total of bytes allocated during the
step on top of what was live before it, and the bytes of the tensors live at its start (given by the
caller: weights, buffers, optimizer state, inputs) are added to that. The profiler sees no frees of
tensors allocated before it started, so what the step would free first (the gradients that
``zero_grad(set_to_none=True)`` drops) is freed by ``release()`` before the measured step.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _profiled_step_peak(step: Callable[[], object]) -> int:
    """Highest running total (bytes) of CPU allocations made while ``step`` runs once."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as file:
            events = json.load(file)["traceEvents"]
    memory = sorted((event for event in events if event.get("name") == "[memory]"), key=lambda event: event["ts"])
    if not memory:
        return 0
    # the profiler's running total carries what earlier profiled sessions left allocated: start from it
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(event["args"]["Total Allocated"] for event in memory) - start

def peak_memory(
    step: Callable[[], object],
    device: torch.device,
    live: Callable[[], Iterable[torch.Tensor]],
    release: Callable[[], object] = lambda: None,
) -> tuple[int, str]:
    """(peak bytes, how they were measured) of one run of ``step`` on ``device``.

    ``release()`` runs first, unmeasured; ``live()`` then returns the tensors live at the start of
    the step (only read on CPU).
    """
    release()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    before = tensor_bytes(live())
    return before + _profiled_step_peak(step), "live tensors + profiler peak of the step's CPU allocations"
