"""Compile fastseg's Triton kernels for sm_90 (H200) without a GPU, through the op wrappers of kernels/.

Inside `compile_for_sm90()` the wrappers run unchanged on CPU tensors that report device cuda:0 (so every
`device.type == "cuda"` branch takes its GPU path, `torch.cuda.get_device_properties` giving an H200's 132
SMs), Triton's active driver targets CUDA sm_90, and each `kernel[grid](...)` launch compiles (ptxas
included) instead of launching: Triton reads only the dtypes and the data_ptr alignment of the tensors.
Each launch is recorded with its registers, spills and shared memory.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import types
from dataclasses import dataclass
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# sm_90 opt-in dynamic shared memory per block (CUDA programming guide, compute capability 9.0): 227 KB.
SM90_SHARED_BYTES = 227 * 1024
H200_SMS = 132
_CUDA = torch.device("cuda", 0)
# the key of Triton's per-device caches while compiling here; popped afterwards, so that a real device 0
# never finds these sm_90 compiles (or this driver's target) in its cache
_DEVICE_KEY = "fastseg-offline-sm90"


def unavailable_reason() -> str | None:
    """Why sm_90 compiles cannot run here (None when they can)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: the kernels are interpreted functions, nothing compiles"
    try:
        from triton.backends import backends
        from triton.runtime.jit import JITFunction  # noqa: F401
    except ImportError as error:
        return f"triton is not installed ({error})"
    if "nvidia" not in backends:
        return "Triton's NVIDIA backend is not installed"
    from triton import knobs
    try:
        knobs.nvidia.ptxas_blackwell.path  # the ptxas Triton uses for sm_90 and newer
    except RuntimeError as error:
        return f"Triton's ptxas for sm_90 is missing ({error})"
    return None


class _OnGpu(torch.Tensor):
    """A CPU tensor that reports device cuda:0."""

    @property
    def device(self) -> torch.device:
        return _CUDA


def _on_gpu(value):
    return value.as_subclass(_OnGpu) if type(value) is torch.Tensor else value


def _is_cuda(device) -> bool:
    return device is not None and not isinstance(device, int) and torch.device(device).type == "cuda"


class _CpuStandsInForCuda(TorchFunctionMode):
    """Tensors asked for on cuda are made on the CPU; every tensor result reports cuda:0."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return tree_map(_on_gpu, func(*args, **kwargs))


class _Sm90Driver:
    """Triton's active driver as far as compiling needs it: the target, a device key and a stream."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return _DEVICE_KEY

    def get_current_stream(self, device=None):
        return 0


@dataclass
class Compiled:
    """One kernel launch of a wrapper, compiled for sm_90."""
    kernel: str
    constexprs: dict
    num_warps: int
    num_stages: int
    shared: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int

    def describe(self) -> str:
        consts = " ".join(f"{k}={getattr(v, 'name', v)}" for k, v in self.constexprs.items())
        return (f"{self.kernel} [{consts}] warps={self.num_warps} stages={self.num_stages}: "
                f"{self.registers} registers, spill stores/loads {self.spill_stores}/{self.spill_loads} B, "
                f"stack {self.stack} B, shared {self.shared} B")


def _ptxas_usage(log: str) -> dict:
    """Registers, stack frame and spill bytes from the `ptxas -v` log of one kernel."""
    registers = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or frame is None:
        raise AssertionError(f"no register/spill report in the ptxas log:\n{log}")
    stack, stores, loads = map(int, frame.groups())
    return dict(registers=int(registers.group(1)), stack=stack, spill_stores=stores, spill_loads=loads)


@contextlib.contextmanager
def compile_for_sm90():
    """Yields the list that each kernel launch inside appends its `Compiled` record to."""
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    launched: list[Compiled] = []
    usage: dict[str, dict] = {}  # per compiled kernel (metadata hash): a launch that hits Triton's cache prints no log
    touched: set = set()
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        touched.add(self)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        md = kernel.metadata
        if md.hash not in usage:
            usage[md.hash] = _ptxas_usage(log.getvalue())
        bound = self.signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in self.arg_names})
        constexprs = {p.name: bound.arguments[p.name] for p in self.params
                      if p.is_constexpr and p.name in bound.arguments}
        launched.append(Compiled(kernel=f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}",
                                 constexprs=constexprs, num_warps=md.num_warps, num_stages=md.num_stages,
                                 shared=md.shared, **usage[md.hash]))
        return kernel

    properties = types.SimpleNamespace(multi_processor_count=H200_SMS, name="offline sm_90 (H200)")
    previous_driver = driver._active  # DriverConfig.reset_active would look for a GPU driver
    with tempfile.TemporaryDirectory(prefix="fastseg-triton-sm90-") as cache, knobs.nvidia.scope(), \
            knobs.cache.scope(), mock.patch.object(JITFunction, "run", compile_only), \
            mock.patch.object(torch.cuda, "get_device_properties", lambda device=None: properties), \
            _CpuStandsInForCuda():
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        driver.set_active(_Sm90Driver())
        try:
            yield launched
        finally:
            driver._active = previous_driver
            for fn in touched:
                fn.device_caches.pop(_DEVICE_KEY, None)
