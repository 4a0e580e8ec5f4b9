"""Input validation shared by the fused ops: every failure is a ValueError naming the argument."""
from __future__ import annotations

import torch

from fastseg.ops.library import autocast_dtype


def _check_tensor(tensor: torch.Tensor, name: str) -> None:
    """A tensor (meta tensors too: they run the reference, shapes only, e.g. for models.summary)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")


def check_float(tensor: torch.Tensor, name: str, rank: int) -> None:
    """A floating-point tensor of the given rank."""
    _check_tensor(tensor, name)
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(tensor.shape)}")


def check_integer(tensor: torch.Tensor, name: str, rank: int) -> None:
    """An integer (not bool) tensor of the given rank."""
    _check_tensor(tensor, name)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {tensor.dtype}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(tensor.shape)}")


def check_int(value: int, name: str, minimum: int | None = None) -> int:
    """A Python int (not a bool, float, string or tensor), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_bool(value: bool, name: str) -> bool:
    """A Python bool: strings such as "False" are truthy and ints are ambiguous, so both are refused."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors on one device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}")


def check_same_dtype(autocast: str | None, **tensors: torch.Tensor) -> None:
    """All tensors in the first one's dtype, unless the op's autocast policy ``autocast`` is about to cast
    them to one dtype (``torch.autocast`` enabled on their device)."""
    items = list(tensors.items())
    first_name, first = items[0]
    if autocast_dtype(autocast, first.device.type) is not None:
        return
    for name, tensor in items[1:]:
        if tensor.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but {first_name} has {first.dtype}")


def check_size(actual: int, expected: int, what: str) -> None:
    """One dimension agreeing with another; ``what`` says which (e.g. "labels batch size")."""
    if actual != expected:
        raise ValueError(f"{what} is {actual}, expected {expected}")


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int, name: str = "labels") -> None:
    """Every label in [0, num_classes) or equal to ignore_index.

    On the CPU a bad label is a ValueError naming it. On a GPU reading the answer back would stall the
    host once per call, so the check is a device-side assertion (torch._assert_async): a bad label
    fails the next synchronising call with a CUDA error carrying this message. Eager mode only; under
    torch.compile the kernels skip out-of-range labels instead of reading out of bounds.
    """
    check_int(num_classes, "num_classes", 1)
    check_int(ignore_index, "ignore_index")
    if torch.compiler.is_compiling() or labels.numel() == 0 or labels.device.type == "meta":
        return  # (a meta tensor has no values to check)
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if labels.device.type != "cpu":
        torch._assert_async(~bad.any(), f"{name} holds a value outside [0, {num_classes}) and not "
                                        f"ignore_index={ignore_index}")
        return
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"{name} holds {value}, outside [0, {num_classes}) and not ignore_index={ignore_index}"
        )
