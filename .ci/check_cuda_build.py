"""Checks an installed fastseg built with its CUDA kernels, on a machine without a GPU.

The extension loads with every symbol resolved now (RTLD_NOW, not lazily at a first call),
build_info() reports CUDA, and every fastseg:: operator of the extension (those with a C++ CPU
kernel; the *_triton ops are Python triton_ops, dispatched by torch.library) has a CUDA kernel. Run it
outside the source tree, so that `import fastseg` is the installed package.
"""
import ctypes
import os
import sys

import torch

import fastseg
from fastseg.ops import build_info

library = fastseg._C.__file__
if os.path.commonpath([os.path.abspath(library), os.getcwd()]) == os.getcwd() and os.path.isdir("csrc"):
    sys.exit(f"run this outside the source tree: fastseg._C came from {library}")
ctypes.CDLL(library, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
print("loaded with RTLD_NOW:", library)

info = build_info()
print("build_info:", info)
if not info.get("cuda"):
    sys.exit("build_info()['cuda'] is false: the CUDA kernels were not built")

ops = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastseg::"))
if not ops:
    sys.exit("no fastseg:: operators are registered")
native = [name for name in ops if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")]
if not native:
    sys.exit("no fastseg:: operator has a C++ kernel")
missing = [name for name in native if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")]
for name in native:
    print(("ok      " if name not in missing else "MISSING ") + name)
if missing:
    sys.exit(f"{len(missing)} of {len(native)} C++ fastseg ops have no CUDA kernel: {', '.join(missing)}")
print(f"all {len(native)} C++ fastseg ops have a CUDA kernel ({len(ops) - len(native)} Triton ops besides)")
