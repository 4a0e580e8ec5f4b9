"""Model tests run single-threaded: the tiny ResNets here are faster on one thread than two on a shared
CPU machine (thread synchronisation dominates such small convolutions)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
