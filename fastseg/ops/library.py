"""Registration helpers shared by the fused ops.

Each op exists as a C++ custom op (``torch.ops.fastseg.<name>``, schema in csrc/ops.cpp, CPU and
CUDA kernels registered by the extension) and as a Triton custom op (``fastseg::<name>_triton``,
defined here in Python). Both get the same fake kernel and the same autograd formula, so
``torch.compile`` and ``torch.library.opcheck`` treat every backend alike.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from fastseg.ops import extension


class OpPair(NamedTuple):
    """A forward op and the op computing its backward, for one backend."""

    forward: Callable
    backward: Callable


def cpp_ops(forward: str, backward: str) -> OpPair | None:
    """The extension's ops ``torch.ops.fastseg.<forward>/<backward>``, or None without the extension."""
    if not extension.available():
        return None
    return OpPair(getattr(torch.ops.fastseg, forward).default, getattr(torch.ops.fastseg, backward).default)


def triton_op(name: str) -> Callable[[Callable], Callable]:
    """Decorator defining ``fastseg::<name>`` as an opaque custom op whose body launches Triton kernels."""
    return lambda fn: torch.library.custom_op(f"fastseg::{name}", fn, mutates_args=())


def register(
    pairs: list[OpPair | None],
    fake_forward: Callable,
    fake_backward: Callable,
    setup_context: Callable,
    backward: Callable[[OpPair], Callable],
) -> None:
    """Register fake kernels and autograd on every backend's op pair.

    ``backward(pair)`` returns the autograd backward function for that pair, so that the backward
    of a backend's forward op calls the same backend's backward op.
    """
    for pair in pairs:
        if pair is None:
            continue
        torch.library.register_fake(pair.forward)(fake_forward)
        torch.library.register_fake(pair.backward)(fake_backward)
        torch.library.register_autograd(pair.forward, backward(pair), setup_context=setup_context)
