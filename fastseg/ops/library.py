"""The declaration of a fused op: one :class:`FusedOp` per op owns its backends and registration.

Each op exists as a C++ custom op (``torch.ops.fastseg.<name>`` and ``<name>_backward``, schemas in
csrc/ops.cpp, CPU and CUDA kernels registered by the extension) and as a Triton custom op
(``fastseg::<name>_triton`` and ``<name>_backward_triton``, defined here from two Python functions).
Both get the same fake kernel and the same autograd formula, so ``torch.compile`` and
``torch.library.opcheck`` treat every backend alike; the ``reference`` backend runs the op's
plain-PyTorch ``*_reference`` function. Under ``torch.autocast`` an op with an autocast policy casts its
floating inputs once, the same way on every backend (registered on the Autocast dispatch keys of the C++
and Triton ops, applied in Python for the reference), so models never cast by hand. See docs/ops.md
for the contract and how to add an op.
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


AUTOCAST_POLICIES = ("lower", "fp32", None)
"""``"lower"``: cast to autocast's dtype (bf16/fp16), as for matmul and conv; ``"fp32"``: cast to float32,
as for losses; ``None``: no autocast rule, the op runs in its inputs' dtypes."""

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
_AUTOCAST_LIBRARY = torch.library.Library("fastseg", "IMPL")


def autocast_dtype(policy: str | None, device_type: str) -> torch.dtype | None:
    """The dtype ``policy`` casts floating inputs on ``device_type`` to; None when autocast is off there.

    Only the device types the rules are registered for are asked (a tuple test, not
    ``torch.amp.is_autocast_available``, which Dynamo in PyTorch 2.11 cannot trace: a graph break
    per op call under ``torch.compile``)."""
    if policy is None or device_type not in _AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return None
    return torch.float32 if policy == "fp32" else torch.get_autocast_dtype(device_type)


def _castable(value, device_type: str) -> bool:
    """A floating tensor on ``device_type`` other than float64: what autocast casts."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == device_type \
        and value.dtype != torch.float64


def _cast(value, device_type: str, dtype: torch.dtype):
    return value.to(dtype) if _castable(value, device_type) else value


def _register_autocast(op: torch._ops.OpOverload, policy: str) -> None:
    """Autocast kernels of ``op`` on every autocast device type: cast by ``policy``, then run ``op``."""
    for device_type in _AUTOCAST_DEVICE_TYPES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_keyset, *arguments, device_type=device_type, excluded=excluded):
            dtype = autocast_dtype(policy, device_type)
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*(_cast(a, device_type, dtype) for a in arguments) if dtype else arguments)

        _AUTOCAST_LIBRARY.impl(op, kernel, key, with_keyset=True)


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
        autocast: one of :data:`AUTOCAST_POLICIES`, what ``torch.autocast`` does to the op's inputs.
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
        autocast: str | None = None,
    ) -> None:
        if autocast not in AUTOCAST_POLICIES:
            raise ValueError(f"autocast must be one of {AUTOCAST_POLICIES}, got {autocast!r}")
        self.name = name
        self.autocast = autocast
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
            if autocast is not None:
                _register_autocast(getattr(pair.forward, "_opoverload", pair.forward), autocast)

    def run_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        """The dtype ``tensor`` has when the op runs: autocast's cast of it by the op's policy, else its own."""
        dtype = autocast_dtype(self.autocast, tensor.device.type)
        return dtype if dtype is not None and _castable(tensor, tensor.device.type) else tensor.dtype

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
            dtype = autocast_dtype(self.autocast, device.type)
            if dtype is None:
                return self.reference(*arguments)
            with torch.autocast(device.type, enabled=False):  # as the fused ops' Autocast kernels
                return self.reference(*(_cast(a, device.type, dtype) for a in arguments))
        return self.fused_result(self.pair(name).forward(*self.fused_arguments(*arguments)))
