"""Builds fastseg and its compiled extension fastseg._C against the PyTorch that is installed.

The C++ CPU sources (csrc/ops.cpp, csrc/cpu/*.cpp) are always built. The CUDA sources
(csrc/cuda/*.cu and their tensor glue csrc/cuda_glue/*.cpp) are built when PyTorch has CUDA and a
CUDA toolkit is found (see find_cuda_home); FASTSEG_CUDA=0|1 forces the choice. TORCH_CUDA_ARCH_LIST
is honoured by PyTorch's build helpers.
"""
import glob
import os
import sys

try:
    import torch
except ImportError:  # pip's isolated build environment: no PyTorch, and we must not pull another one
    sys.exit(
        "fastseg: error: PyTorch is not importable in this build environment. fastseg compiles against the "
        "PyTorch you have installed: install it first (e.g. pip install torch==2.13.0), then run "
        "pip install --no-build-isolation ."
    )
from setuptools import find_namespace_packages, find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc")]
# Measured builds of the whole extension on the 2-core development machine, quiet (README, Install).
CPU_BUILD_SECONDS = 99
CUDA_BUILD_SECONDS = 182


def _is_toolkit(home) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")) and os.path.isfile(
        os.path.join(home, "bin", "nvcc")
    )


def find_cuda_home():
    """The CUDA toolkit to build with, and what was tried.

    CUDA_HOME (or CUDA_PATH) when set; else PyTorch's guess when it holds include/cuda_runtime.h and
    bin/nvcc (it guesses from the nvcc on PATH, which is wrong where that nvcc is a wrapper script);
    else /usr/local/cuda. Returns (home or None, [(candidate, source), ...]).
    """
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            home = os.environ[variable]
            return (home if _is_toolkit(home) else None), [(home, f"${variable}")]
    tried = [(cpp_extension.CUDA_HOME, "PyTorch's guess"), ("/usr/local/cuda", "the default location")]
    return next((home for home, _ in tried if _is_toolkit(home)), None), tried


def _want_cuda() -> bool:
    forced = os.environ.get("FASTSEG_CUDA")
    if forced not in (None, "0", "1"):
        sys.exit(f"fastseg: error: FASTSEG_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0" or torch.version.cuda is None:
        if forced == "1":
            sys.exit(f"fastseg: error: FASTSEG_CUDA=1 but this PyTorch ({torch.__version__}) has no CUDA")
        return False
    home, tried = find_cuda_home()
    if home is None:
        where = "; ".join(f"{source}: {candidate or '(none)'}" for candidate, source in tried)
        message = f"no CUDA toolkit (include/cuda_runtime.h and bin/nvcc) found; tried {where}"
        if forced == "1":
            sys.exit(f"fastseg: error: FASTSEG_CUDA=1 but {message}. Set CUDA_HOME to the toolkit.")
        print(f"fastseg: building the C++ kernels only: {message}", file=sys.stderr)
        return False
    # PyTorch's build helpers read their module-level CUDA_HOME (nvcc, include and library paths).
    cpp_extension.CUDA_HOME = home
    os.environ["CUDA_HOME"] = home
    return True


def _notice(message: str) -> None:
    """Tell the user, also when pip hides the build's output (it does without -v): the terminal when
    there is one, else stderr (shown by pip -v and in CI logs)."""
    try:
        with open("/dev/tty", "w") as terminal:
            terminal.write(message + "\n")
    except OSError:
        print(message, file=sys.stderr)


def _compile_notice(cpp_files: int, cuda_files: int) -> None:
    """What is compiled and how long it took on the development machine (README, Install)."""
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    if cuda_files:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or "PyTorch's default architectures"
        what = f"{cpp_files} C++ and {cuda_files} CUDA files for {archs}"
        expected = f"{CUDA_BUILD_SECONDS} s with one architecture, more with each added one"
    else:
        what = f"{cpp_files} C++ files"
        expected = f"{CPU_BUILD_SECONDS} s"
    _notice(f"fastseg: compiling the kernels ({what}, {jobs} parallel jobs); on a quiet 2-core machine this "
            f"took {expected}. pip shows nothing meanwhile unless run with -v.")


def _extension():
    with_cuda = _want_cuda()
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    torch_version = torch.__version__.split("+")[0]
    macros = [("FASTSEG_TORCH_VERSION", f'"{torch_version}"')]
    cxx = ["-O3", "-fopenmp"]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda_glue/*.cpp")) if with_cuda else []
    if {"build_ext", "bdist_wheel", "editable_wheel", "develop"} & set(sys.argv):  # not for pip's metadata steps
        cuda_files = sum(source.endswith(".cu") for source in cuda_sources)
        _compile_notice(len(sources) + len(cuda_sources) - cuda_files, cuda_files)
    if not with_cuda:
        return cpp_extension.CppExtension(
            "fastseg._C", sources, define_macros=macros, include_dirs=INCLUDE,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    sources += cuda_sources
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    macros += [("FASTSEG_WITH_CUDA", None), ("FASTSEG_CUDA_ARCHS", f'"{archs}"')]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "fastseg._C", sources, define_macros=macros, include_dirs=INCLUDE,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
    )


# The YAML recipes' folders: data-only (namespace) packages, listed so that setuptools ships them
# as packages rather than as data of fastseg (deprecated, with a warning per folder).
CONFIG_PACKAGES = find_namespace_packages(include=["fastseg.configs", "fastseg.configs.*"])

setup(
    packages=find_packages(include=["fastseg", "fastseg.*"]) + CONFIG_PACKAGES + ["fastseg.kernels"],
    package_dir={"fastseg.kernels": "kernels"},
    package_data={package: ["*.yaml"] for package in CONFIG_PACKAGES},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
