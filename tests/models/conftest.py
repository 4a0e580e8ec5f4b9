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


@pytest.fixture
def fit_one_batch():
    """``fit(model, images, labels, optimizer, steps)``: ``steps`` optimizer steps on the total loss of one
    batch; returns the total loss before each step."""

    def fit(model, images, labels, optimizer, steps):
        history = []
        for _ in range(steps):
            total = model.loss(model(images), labels)["total"]
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
        return history

    return fit
