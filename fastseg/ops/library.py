"""The declaration of a fused op: one :class:`FusedOp` per op owns its backends and registration.

Each op exists as a C++ custom op (``torch.ops.fastseg.<name>`` and ``<name>_backward``, schemas in
csrc/ops.cpp, CPU and CUDA kernels registered by the extension) and as a Triton custom op
(``fastseg::<name>_triton`` and ``<name>_backward_triton``, defined here from two Python functions).
Both get the same fake kernel and the same autograd formula, so ``torch.compile`` and
``torch.library.opcheck`` treat every backend alike; the ``reference`` backend runs the op's
plain-PyTorch ``*_reference`` function. See docs/ops.md for the contract and how to add an op.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from fastseg.ops import backend as _backend
from fastseg.ops import extension


class OpPair(NamedTuple):
    """A forward op and the op computing its backward, for one backend."""

    forward: Callable
    backward: Callable


def _unchanged(*arguments):
    return arguments


def _same(result):
    return result


def first_output(outputs: tuple):
    """The op's result without the tensors its forward returns for the backward (a ``fused_result``)."""
    return outputs[0]


class FusedOp:
    """One fused op, declared once.

    Args:
        name: the C++ ops are ``torch.ops.fastseg.<name>`` and ``<name>_backward``; the Triton ops
            ``fastseg::<name>_triton`` and ``<name>_backward_triton`` are defined from
            ``triton_forward`` and ``triton_backward``, whose type annotations give their schemas.
        reference: the plain-PyTorch function the ``reference`` backend runs, on the front end's arguments.
        triton_forward, triton_backward: functions launching the Triton kernels, with the C++ ops' arguments.
        fake_forward, fake_backward: shape-only kernels of the forward and backward ops.
        setup_context: saves what the backward needs (``torch.library.register_autograd``).
        backward: ``backward(pair)`` returns the autograd backward calling ``pair.backward``, so that
            a backend's forward op is differentiated by the same backend's backward op.
        fused_arguments: the fused forward op's arguments from the front end's (default: the same).
        fused_result: the front end's result from the fused forward's outputs (default: the same),
            e.g. without the tensors the forward saves for the backward.
    """

    def __init__(
        self,
        name: str,
        reference: Callable,
        triton_forward: Callable,
        triton_backward: Callable,
        fake_forward: Callable,
        fake_backward: Callable,
        setup_context: Callable,
        backward: Callable[[OpPair], Callable],
        fused_arguments: Callable[..., tuple] = _unchanged,
        fused_result: Callable = _same,
    ) -> None:
        self.name = name
        self.reference = reference
        self.fused_arguments = fused_arguments
        self.fused_result = fused_result
        self.triton = OpPair(
            torch.library.custom_op(f"fastseg::{name}_triton", triton_forward, mutates_args=()),
            torch.library.custom_op(f"fastseg::{name}_backward_triton", triton_backward, mutates_args=()),
        )
        self.cpp = None
        if extension.available():
            self.cpp = OpPair(getattr(torch.ops.fastseg, name).default,
                              getattr(torch.ops.fastseg, f"{name}_backward").default)
        for pair in (self.cpp, self.triton):
            if pair is None:
                continue
            torch.library.register_fake(pair.forward)(fake_forward)
            torch.library.register_fake(pair.backward)(fake_backward)
            torch.library.register_autograd(pair.forward, backward(pair), setup_context=setup_context)

    def pair(self, backend: str) -> OpPair:
        """The forward and backward ops of a fused backend: "triton", or "cpu"/"cuda" (the C++ ops)."""
        if backend == "triton":
            return self.triton
        if backend in ("cpu", "cuda") and self.cpp is not None:
            return self.cpp
        raise ValueError(f"{self.name} has no fused ops for backend {backend!r} here")

    def __call__(self, device: torch.device, backend: str | None, *arguments):
        """Run the op on validated ``arguments`` with the backend resolved for ``device``."""
        name = _backend.resolve(device, backend)
        if name == "reference":
            return self.reference(*arguments)
        return self.fused_result(self.pair(name).forward(*self.fused_arguments(*arguments)))
