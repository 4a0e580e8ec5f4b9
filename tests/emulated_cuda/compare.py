"""Runs an emulated CUDA op in every thread order and compares it with the reference."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from coordinate_rounding import assert_close_with_slack

from .extension import ORDERS, thread_order

# (atol, rtol) of a result in this dtype against a float64 reference on the same (rounded) inputs.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
DTYPES = list(TOLERANCE)


def on_device(emulated, *tensors: Tensor | None) -> list[Tensor | None]:
    """Copies of the inputs in the layer's device memory (same strides, redzones around them), so that
    a kernel reading past an input reads NaN/-1 or faults; None stays None."""
    return [None if t is None else emulated.to_device(t) for t in tensors]


def _bits(tensor: Tensor) -> Tensor:
    return tensor.detach().contiguous().flatten().view(torch.uint8)


def check_every_order(
    run: Callable[[], Sequence[Tensor]],
    expected: Sequence[Tensor],
    dtype: torch.dtype,
    deterministic: bool | Sequence[bool] = True,
    atol_of_max: bool = False,
    slack: Sequence[Tensor | None] | None = None,
) -> None:
    """run() in forward, reverse and shuffled thread order: every result matches `expected` (float64)
    within the dtype's tolerance (with `atol_of_max`, atol times the largest |expected| when above 1,
    for sums over many pixels), and the outputs of deterministic kernels (all, or those flagged in `deterministic`)
    have the same bits in every order. `slack` (per output, None for none) widens the tolerance element
    by element by what the inputs' rounding alone may move a result (tests/coordinate_rounding.py)."""
    atol, rtol = TOLERANCE[dtype]
    bitwise = [deterministic] * len(expected) if isinstance(deterministic, bool) else list(deterministic)
    seed = int(torch.randint(0, 2**31, ()))
    first = None
    for order in ORDERS:
        with thread_order(order, seed):
            outputs = tuple(run())
        assert len(outputs) == len(expected)
        for index, (got, want) in enumerate(zip(outputs, expected)):
            assert got.shape == want.shape, f"output {index}: shape {tuple(got.shape)} != {tuple(want.shape)}"
            largest = max(1.0, want.abs().max().item()) if atol_of_max and want.numel() else 1.0
            if slack is not None and slack[index] is not None:
                assert_close_with_slack(got, want.double(), slack[index], atol * largest, rtol,
                                        f"output {index}, {order} thread order (seed {seed})")
                continue
            torch.testing.assert_close(
                got.double(), want.double(), atol=atol * largest, rtol=rtol,
                msg=lambda text: f"output {index}, {order} thread order (seed {seed}): {text}",
            )
        if first is not None:
            for index, (got, base) in enumerate(zip(outputs, first)):
                assert not bitwise[index] or torch.equal(_bits(got), _bits(base)), (
                    f"output {index} differs between forward and {order} thread order (seed {seed})"
                )
        if first is None:
            first = outputs
