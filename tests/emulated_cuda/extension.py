"""Builds and loads the emulated-CUDA test extension (see include/fastseg_emulated_cuda.h).

csrc/cuda/*.cu are compiled by the host compiler on the layer in this folder, with csrc/cuda_glue
registering every op for CPU tensors as ``torch.ops.fastseg_emulated_cuda.<op>`` (same schemas as
``torch.ops.fastseg``). Built once, cached under the temp folder by torch's cpp_extension (rebuilt
when a source changes).
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import shutil
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
LIBRARY = "fastseg_emulated_cuda"
OPS = ("class_avg_pool", "soft_class_pool", "attentional_class_feature", "gaussian_center_distance",
       "lovasz_hinge", "flow_warp", "deform_conv2d")
ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}
# The flags PyTorch's CUDA build passes to nvcc that change what the sources may do.
CUDA_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


def _cuda_include() -> str:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return os.path.join(home, "include")


def unavailable_reason() -> str | None:
    """Why the extension cannot be built here, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no host C++ compiler ({compiler}) to build the emulated-CUDA layer"
    if not os.path.isfile(os.path.join(_cuda_include(), "cuda_runtime.h")):
        return f"no CUDA headers ({_cuda_include()}/cuda_runtime.h; set CUDA_HOME)"
    from fastseg.ops import extension

    if not extension.available():
        return f"fastseg._C is not usable: {extension.unavailable_reason()}"
    return None


def _kernel_sources(build_dir: str) -> list[str]:
    """One C++ file per .cu (cpp_extension would hand a .cu to nvcc), including it unchanged."""
    wrappers = []
    for source in sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu"))):
        wrapper = os.path.join(build_dir, os.path.basename(source)[:-3] + "_cu.cpp")
        text = f'#include "{source}"\n'
        if not os.path.isfile(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as file:
                file.write(text)
        wrappers.append(wrapper)
    return wrappers


_library = None


def _define_schemas() -> None:
    """The ops of fastseg, under the library fastseg_emulated_cuda."""
    global _library
    import fastseg.ops  # noqa: F401  (loads fastseg._C, which defines torch.ops.fastseg)

    _library = torch.library.Library(LIBRARY, "FRAGMENT")
    for op in OPS:
        for name in (op, f"{op}_backward"):
            schema = str(getattr(torch.ops.fastseg, name).default._schema)
            _library.define(schema.split("::", 1)[1])


@functools.lru_cache(maxsize=None)
def load():
    """torch.ops.fastseg_emulated_cuda, building the extension on first use."""
    tag = hashlib.sha1(ROOT.encode()).hexdigest()[:8]
    build_dir = os.path.join(tempfile.gettempdir(), f"fastseg_emulated_cuda_{tag}")
    os.makedirs(build_dir, exist_ok=True)
    _define_schemas()
    from torch.utils import cpp_extension

    sources = [os.path.join(HERE, name) for name in ("runtime.cpp", "device_memory.cpp", "layer_ops.cpp")]
    sources += _kernel_sources(build_dir) + sorted(glob.glob(os.path.join(CSRC, "cuda_glue", "*.cpp")))
    cpp_extension.load(
        name="fastseg_emulated_cuda",
        sources=sources,
        extra_cflags=["-O2", "-std=c++17", "-DFASTSEG_EMULATED_CUDA", "-fdata-sections", *CUDA_FLAGS],
        # -Bsymbolic: the layer's cudaGetDevice, cudaDeviceGetAttribute, ... bind to its own definitions, not to
        # the CUDA runtime a CUDA build of PyTorch has loaded (torch 2.11+cu130: 351 of 352 tests failed without)
        extra_ldflags=["-Wl,-T," + os.path.join(HERE, "shared_memory.ld"), "-Wl,-Bsymbolic"],
        extra_include_paths=[CSRC, os.path.join(HERE, "include"), _cuda_include()],
        build_directory=build_dir,
        with_cuda=False,
        is_python_module=False,
    )
    return getattr(torch.ops, LIBRARY)


@contextlib.contextmanager
def thread_order(order: str, seed: int = 0):
    """Runs the emulated kernels' threads between barriers in ``order`` (forward, reverse, shuffle)."""
    ops = load()
    ops.set_thread_order(ORDERS[order], seed)
    try:
        yield
    finally:
        ops.set_thread_order(ORDERS["forward"], 0)
