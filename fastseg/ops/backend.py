"""Which implementation of a fused op runs.

Every op has four: ``reference`` (plain PyTorch), ``cpu`` (C++), ``cuda`` (CUDA C++) and
``triton``. ``auto`` picks ``cuda`` for CUDA tensors and ``cpu`` for CPU tensors when the compiled
extension has them, else ``reference`` with one warning. The choice is made, in order of
precedence, by an op's ``backend=`` argument, :func:`set_backend` / :func:`use_backend`, and the
``FASTSEG_BACKEND`` environment variable.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from fastseg.ops import extension

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

_current = os.environ.get("FASTSEG_BACKEND", "auto")
_warned_fallback = False


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (one of :data:`BACKENDS`)."""
    global _current
    _current = _check_name(name)


def get_backend() -> str:
    """The process-wide default backend."""
    return _check_name(_current)


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager that sets the default backend for its body."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def triton_usable(device: torch.device) -> tuple[bool, str]:
    """Whether Triton kernels can run on tensors of ``device`` here, and why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (got {device})"


def resolve(device: torch.device, backend: str | None = None) -> str:
    """The concrete backend ("reference", "cpu", "cuda" or "triton") for tensors on ``device``."""
    global _warned_fallback
    name = _check_name(backend if backend is not None else get_backend())
    if name == "auto":
        if device.type == "meta":  # shapes only: the reference's PyTorch ops propagate them
            return "reference"
        if device.type == "cuda" and extension.has_cuda():
            return "cuda"
        if device.type == "cpu" and extension.available():
            return "cpu"
        if not _warned_fallback:
            _warned_fallback = True
            reason = extension.unavailable_reason() or f"the extension has no kernels for {device.type}"
            warnings.warn(f"fastseg ops fall back to the PyTorch reference: {reason}", stacklevel=3)
        return "reference"
    if name == "triton":
        ok, reason = triton_usable(device)
        if not ok:
            raise RuntimeError(f"backend 'triton' is not usable: {reason}")
    elif name in ("cpu", "cuda"):
        if device.type != name:
            raise ValueError(f"backend {name!r} was asked for tensors on {device}")
        if not extension.available():
            raise RuntimeError(f"backend {name!r} needs fastseg._C: {extension.unavailable_reason()}")
        if name == "cuda" and not extension.has_cuda():
            raise RuntimeError("backend 'cuda' needs fastseg._C built with CUDA (FASTSEG_CUDA=1)")
    return name
