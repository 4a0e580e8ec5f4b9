"""Checks an installed fastseg built with its CUDA kernels, on a machine without a GPU.

The extension loads with every symbol resolved now (RTLD_NOW, not lazily at a first call),
build_info() reports CUDA, every fastseg:: operator of the extension (those with a C++ CPU
kernel; the *_triton ops are Python triton_ops, dispatched by torch.library) has a CUDA kernel, and
no device kernel of the fatbinary spills (cuobjdump -res-usage: a stack frame or local memory), fp64
instantiations excepted (not a GPU benchmark dtype; printed). Run it outside the source tree, so that
`import fastseg` is the installed package.
"""
import ctypes
import os
import re
import shutil
import subprocess
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


def cuobjdump():
    """cuobjdump of the CUDA toolkit, else the one Triton's NVIDIA backend ships; None when neither is here."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (os.path.join(home, "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        import triton
    except ImportError:
        return None
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.access(bundled, os.X_OK) else None


tool = cuobjdump()
if tool is None:
    sys.exit("no cuobjdump (CUDA toolkit or Triton's NVIDIA backend) to read the kernels' resource usage")
report = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True, check=True).stdout
kernels = re.findall(r"Function (\S+):\s+REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", report)
if not kernels:
    sys.exit(f"cuobjdump -res-usage found no device kernels in {library}")
names = subprocess.run(["c++filt"], input="\n".join(k[0] for k in kernels), capture_output=True, text=True,
                       check=True).stdout.splitlines()
spilling, exempt = [], []
for name, (_, registers, stack, shared, local) in zip(names, kernels):
    if int(stack) or int(local):
        line = f"{name[:160]}: {registers} registers, stack {stack} B, local {local} B"
        (exempt if "<double" in name else spilling).append(line)
print(f"{len(kernels)} device kernels, at most {max(int(k[1]) for k in kernels)} registers, "
      f"{len(spilling) + len(exempt)} with a stack frame or local memory")
for line in exempt:
    print("fp64 (allowed): " + line)
if spilling:
    sys.exit("kernels that spill (stack frame or local memory):\n" + "\n".join(spilling))
