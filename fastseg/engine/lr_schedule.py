"""The 'poly' learning-rate policy with an optional linear warmup.

lr(t) = (base_lr - min_lr) * (1 - t / T) ** power + min_lr for iteration t of T, the policy every paper
here uses (power 0.9; ACFNet Sec. 4.2, DecoupleSegNet Sec. 4, CSFRNet "Implementation Details").
During the first ``warmup_iters`` iterations the factor ramps linearly from ``warmup_ratio`` to 1.
The schedule is a pure function of the iteration, so its state is the iteration count.
"""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def poly_factor(
    iteration: int, max_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 0.1
) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based): poly decay times the linear warmup ramp."""
    if max_iters <= 0:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    progress = min(iteration, max_iters) / max_iters
    factor = (1.0 - progress) ** power
    if iteration < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return factor


class PolyLR(LRScheduler):
    """Poly decay (optionally after a linear warmup) of every param group's initial LR to ``min_lr``.

    Call ``step()`` once per iteration after ``optimizer.step()``. ``state_dict()`` holds the iteration
    and base LRs only, so a resumed run takes its schedule (e.g. more iterations) from its config.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_iters: int,
        power: float = 0.9,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.max_iters, self.power, self.min_lr = max_iters, power, min_lr
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = poly_factor(self.last_epoch, self.max_iters, self.power, self.warmup_iters, self.warmup_ratio)
        return [(base - self.min_lr) * factor + self.min_lr for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {key: self.__dict__[key] for key in ("last_epoch", "_step_count", "base_lrs", "_last_lr")}
