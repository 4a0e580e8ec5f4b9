"""torch.backends.cuda.matmul.allow_tf32 set for a block of a test."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def set_allow_tf32(value: bool):
    """torch.backends.cuda.matmul.allow_tf32 set to ``value`` inside, restored after (monkeypatch cannot: the
    attribute lives behind the module's __getattr__)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = value
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
