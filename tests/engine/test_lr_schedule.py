"""The poly schedule with warmup against its formula, and its resume state."""
from __future__ import annotations

import pytest
import torch

from fastseg.engine.lr_schedule import PolyLR, poly_factor


def _optimizer(lr: float) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.randn(3))], lr=lr, momentum=0.9)


def test_poly_matches_the_formula_with_warmup_and_min_lr():
    base, min_lr, total, warmup, ratio, power = 0.01, 1e-4, 50, 5, 0.1, 0.9
    optimizer = _optimizer(base)
    scheduler = PolyLR(optimizer, total, power, min_lr, warmup, ratio)
    seen = []
    for _ in range(total + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for t, lr in enumerate(seen):
        ramp = ratio + (1 - ratio) * t / warmup if t < warmup else 1.0
        expected = (base - min_lr) * (1 - t / total) ** power * ramp + min_lr
        assert lr == pytest.approx(expected, rel=1e-12), t
    assert seen[0] == pytest.approx((base - min_lr) * ratio + min_lr)
    assert seen[-1] == pytest.approx(min_lr)
    assert max(seen) == seen[warmup]


def test_state_restores_the_iteration_but_not_the_schedule():
    optimizer = _optimizer(0.02)
    scheduler = PolyLR(optimizer, 100)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    longer = PolyLR(_optimizer(0.02), 200)  # a resumed run that was given more iterations
    longer.load_state_dict(state)
    assert longer.last_epoch == 30 and longer.max_iters == 200
    longer.optimizer.step()
    longer.step()
    assert longer.get_last_lr()[0] == pytest.approx(0.02 * poly_factor(31, 200))


def test_rejects_an_empty_schedule():
    with pytest.raises(ValueError, match="max_iters"):
        poly_factor(0, 0)
