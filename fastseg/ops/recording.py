"""Which fused ops a piece of code runs: ``with FusedOpRecorder() as recorder: ...; recorder.called``.

Checks that a model really takes the backend asked for: under ``use_backend("reference")`` no
``torch.ops.fastseg`` op reaches the dispatcher, under ``"auto"`` the model's fused ops do. Eager
code only (``torch.compile`` traces through dispatch modes differently).
"""
from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class FusedOpRecorder(TorchDispatchMode):
    """Records the names (e.g. ``"flow_warp"``, ``"flow_warp_backward"``) of the ``fastseg::`` ops dispatched in its body."""

    def __init__(self) -> None:
        super().__init__()
        self.called: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace, _, name = func._schema.name.partition("::")
        if namespace == "fastseg":
            self.called.add(name)
        return func(*args, **(kwargs or {}))
