"""Loading of the compiled extension ``fastseg._C`` and what it was built with.

The extension registers the ``torch.ops.fastseg.*`` C++ (CPU) and CUDA kernels. It is optional:
when it is missing, or was compiled against another PyTorch, ``import fastseg`` still works and
the ops fall back to their plain-PyTorch reference (see ``fastseg.ops.backend``).
"""
from __future__ import annotations

import importlib

import torch


def _load() -> tuple[object | None, str]:
    """Import fastseg._C once; return (module or None, reason it is unusable or "")."""
    try:
        module = importlib.import_module("fastseg._C")
    except (ImportError, OSError) as error:
        return None, f"the compiled extension fastseg._C could not be loaded ({error})"
    built_for = module.build_info()["torch_version"]
    running = torch.__version__.split("+")[0]
    if built_for != running:
        return None, (
            f"fastseg._C was compiled against torch {built_for} but torch {running} is running; "
            "rebuild with `pip install --no-build-isolation .`"
        )
    return module, ""


# Loaded once at import, so that the functions below are plain reads that torch.compile traces.
_MODULE, _REASON = _load()
_INFO = _MODULE.build_info() if _MODULE is not None else {}


def available() -> bool:
    """True when fastseg._C is loaded and matches the running PyTorch."""
    return _MODULE is not None


def unavailable_reason() -> str:
    """Why the extension is not used ("" when it is)."""
    return _REASON


def has_cuda() -> bool:
    """True when the loaded extension contains the CUDA kernels."""
    return bool(_INFO.get("cuda", False))


def build_info() -> dict:
    """What the extension was built with.

    Keys: ``loaded`` (bool), ``reason`` (why not, or ""), ``cpu`` (C++ CPU kernels present),
    ``cuda`` (CUDA kernels present), ``cuda_version`` (nvcc's, "" without CUDA), ``cuda_archs``
    (TORCH_CUDA_ARCH_LIST at build time, "" for PyTorch's default), ``torch_version`` (the torch
    it was compiled against), ``openmp`` (CPU kernels parallelised with OpenMP).
    """
    if _MODULE is None:
        return {"loaded": False, "reason": _REASON, "cpu": False, "cuda": False, "cuda_version": "",
                "cuda_archs": "", "torch_version": "", "openmp": False}
    return {"loaded": True, "reason": "", **_INFO}
