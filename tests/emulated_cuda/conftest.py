"""The emulated-CUDA extension, built once per session, or a skip with the reason it cannot be built."""
from __future__ import annotations

import pytest

from .extension import load, unavailable_reason


@pytest.fixture(scope="session")
def emulated():
    """torch.ops.fastseg_emulated_cuda: the CUDA glue and kernels running on CPU tensors."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return load()
