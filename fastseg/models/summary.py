"""Parameters and FLOPs per module of a model, from one forward pass with hooks.

FLOPs are counted as 2 x MACs (one multiply and one add per multiply-accumulate) of every Conv2d
and Linear, for the whole ``input_size`` batch; normalisation, activations,
pooling, interpolation, softmax and attention matmuls are not counted (they are a few percent of
a ResNet segmentor's work). Rows group modules by their dotted name cut to ``depth`` parts
(``depth=1``: ``backbone``, ``decode_head``, ...; ``depth=2``: ``backbone.layer1``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_COUNTED = (nn.Conv2d, nn.Linear)


@dataclass
class ModelSummary:
    """Rows of (name, parameters, MACs); totals; ``str()`` is the printed table."""

    rows: list[tuple[str, int, int]] = field(default_factory=list)
    total_params: int = 0
    total_macs: int = 0
    input_size: tuple[int, ...] = ()

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def __str__(self) -> str:
        width = max([len("module")] + [len(name) for name, _, _ in self.rows])
        lines = [f"{'module':<{width}}  {'params':>12}  {'GFLOPs':>10}",
                 f"{'-' * width}  {'-' * 12}  {'-' * 10}"]
        for name, params, macs in self.rows:
            lines.append(f"{name:<{width}}  {params:>12,}  {2 * macs / 1e9:>10.3f}")
        lines.append(f"{'total':<{width}}  {self.total_params:>12,}  {self.total_flops / 1e9:>10.3f}")
        lines.append(f"input {tuple(self.input_size)}; FLOPs = 2 x MACs of conv/linear layers")
        return "\n".join(lines)


def _group(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth]) or "(root)"


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    kernel = module.weight.shape[2] * module.weight.shape[3]
    return output.numel() * (module.in_channels // module.groups) * kernel


def summary(model: nn.Module, input_size: tuple[int, ...], depth: int = 1, print_table: bool = True) -> ModelSummary:
    """Count parameters and conv/linear FLOPs per module group; print the table and return it.

    Args:
        model: any nn.Module taking one image tensor.
        input_size: (B, C, H, W), or (C, H, W) for batch 1.
        depth: how many dotted name parts a row groups by.
        print_table: print the table (the returned :class:`ModelSummary` prints the same with ``str``).

    The forward runs in eval mode under ``torch.no_grad`` on the model's device and dtype (so
    training-only branches such as the auxiliary head show parameters but no FLOPs); the model's
    training flag is restored afterwards.
    """
    if len(input_size) == 3:
        input_size = (1, *input_size)
    if len(input_size) != 4:
        raise ValueError(f"input_size must be (C, H, W) or (B, C, H, W), got {tuple(input_size)}")
    rows: dict[str, list[int]] = {}
    for name, _ in model.named_modules():
        if name:
            rows.setdefault(_group(name, depth), [0, 0])
    for name, parameter in model.named_parameters():
        rows.setdefault(_group(name.rpartition(".")[0], depth), [0, 0])[0] += parameter.numel()

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):
            group = _group(name, depth)

            def hook(mod, inputs, output, group=group):
                rows[group][1] += _macs(mod, output)

            handles.append(module.register_forward_hook(hook))
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    kept = [(name, params, macs) for name, (params, macs) in rows.items() if params or macs]
    result = ModelSummary(
        rows=kept,
        total_params=sum(p.numel() for p in model.parameters()),
        total_macs=sum(macs for _, _, macs in kept),
        input_size=tuple(input_size),
    )
    if print_table:
        print(result)
    return result
