"""Builds fastseg and its compiled extension fastseg._C.

The C++ CPU sources (csrc/ops.cpp, csrc/cpu/*.cpp) are always built. The CUDA sources
(csrc/cuda/*.cu and their tensor glue csrc/cuda_glue/*.cpp) are built when PyTorch has CUDA and
nvcc is found; FASTSEG_CUDA=0|1 forces the choice. TORCH_CUDA_ARCH_LIST is honoured by PyTorch's
build helpers.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc")]


def _want_cuda() -> bool:
    forced = os.environ.get("FASTSEG_CUDA")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if forced is None:
        return available
    if forced == "1" and not available:
        raise RuntimeError(
            "FASTSEG_CUDA=1 but PyTorch has no CUDA (torch.version.cuda is None) or nvcc was not found"
        )
    return forced == "1"


def _extension():
    with_cuda = _want_cuda()
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    torch_version = torch.__version__.split("+")[0]
    macros = [("FASTSEG_TORCH_VERSION", f'"{torch_version}"')]
    cxx = ["-O3", "-fopenmp"]
    if not with_cuda:
        return CppExtension(
            "fastseg._C", sources, define_macros=macros, include_dirs=INCLUDE,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda_glue/*.cpp"))
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    macros += [("FASTSEG_WITH_CUDA", None), ("FASTSEG_CUDA_ARCHS", f'"{archs}"')]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "fastseg._C", sources, define_macros=macros, include_dirs=INCLUDE,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["fastseg", "fastseg.*"]) + ["fastseg.kernels"],
    package_dir={"fastseg.kernels": "kernels"},
    package_data={"fastseg": ["configs/*.yaml", "configs/**/*.yaml"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
