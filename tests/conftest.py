"""Shared fixtures: the (backend, device) pairs every op test runs on, each skipped with its reason."""
from __future__ import annotations

import os

import pytest
import torch

from fastseg.ops import extension

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_configure(config):
    # Third-party: inductor (torch.compile) imports torch.fx.experimental.optimization, which imports
    # torch.utils.mkldnn, whose 14 @torch.jit.script_method decorators each warn that script_method is
    # deprecated (torch 2.13). Nothing in fastseg uses TorchScript; only this message is filtered.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _skip_reason(backend: str, device: str) -> str | None:
    if device == "cuda" and not HAS_CUDA:
        return "no CUDA device on this machine"
    if backend in ("cpu", "cuda") and not extension.available():
        return f"fastseg._C is not usable: {extension.unavailable_reason()}"
    if backend == "cuda" and not extension.has_cuda():
        return "fastseg._C was built without CUDA"
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if device == "cpu" and not INTERPRET:
            return "Triton on CPU tensors needs TRITON_INTERPRET=1 (CI runs `TRITON_INTERPRET=1 pytest -m triton`)"
    return None


def _param(backend: str, device: str):
    marks = []
    if backend == "triton":
        marks.append(pytest.mark.triton)
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    reason = _skip_reason(backend, device)
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param((backend, torch.device(device)), marks=marks, id=f"{backend}-{device}")


# Fused backends compared against the reference.
FUSED = [_param("cpu", "cpu"), _param("triton", "cpu"), _param("cuda", "cuda"), _param("triton", "cuda")]
# Backends that support float64 gradcheck (the reference included).
GRADCHECK = [_param("reference", "cpu"), _param("cpu", "cpu"), _param("triton", "cpu"), _param("cuda", "cuda")]


@pytest.fixture(params=FUSED)
def fused(request):
    """(backend name, torch.device) of a fused implementation."""
    return request.param


@pytest.fixture(params=GRADCHECK)
def differentiable(request):
    """(backend name, torch.device) on which float64 gradcheck runs."""
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random inputs for every test, reproducible from the printed seed."""
    seed = abs(hash(request.node.nodeid)) % (2**31)
    torch.manual_seed(seed)
    print(f"seed={seed}")
