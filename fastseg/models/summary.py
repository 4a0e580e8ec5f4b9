"""Parameters and FLOPs per module of a model, from one forward pass with hooks.

FLOPs are counted as 2 x MACs (one multiply and one add per multiply-accumulate) of every Conv2d,
Linear and deformable convolution (:class:`~fastseg.ops.DeformConv2d`, its k x k taps; the bilinear
sampling is not counted) and the two attention matmuls of a non-local block (theta^T phi and the
attention times g: 2 x B x N^2 x d for N = h*w positions of d channels), for the whole ``input_size``
batch; normalisation, activations, pooling, interpolation, softmax and the fused paper ops are not
counted (they are a few percent of a ResNet segmentor's work). Rows group modules by their dotted name cut to ``depth`` parts
(``depth=1``: ``backbone``, ``decode_head``, ...; ``depth=2``: ``backbone.layer1``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from collections.abc import Callable

import torch
from torch import nn

from fastseg.models.heads.non_local import NonLocalBlock
from fastseg.ops import DeformConv2d


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
        lines.append(f"input {tuple(self.input_size)}; FLOPs = 2 x MACs of conv/linear/deformable layers and non-local matmuls")
        return "\n".join(lines)


def _group(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth]) or "(root)"


def conv_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Conv2d / DeformConv2d: every output element takes (in_channels / groups) x kh x kw MACs."""
    return output.numel() * module.weight[0].numel()


def linear_macs(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def non_local_macs(module: NonLocalBlock, inputs: tuple, output: torch.Tensor) -> int:
    """The attention matmuls (its 1x1 convs count as convs): (N x d)(d x N) and (N x N)(N x d) per image."""
    batch, _, height, width = inputs[0].shape
    positions = height * width
    return 2 * batch * positions * positions * module.theta.out_channels


MAC_RULES: dict[type, Callable[[nn.Module, tuple, torch.Tensor], int]] = {
    nn.Conv2d: conv_macs, DeformConv2d: conv_macs, nn.Linear: linear_macs, NonLocalBlock: non_local_macs,
}


def summary(model: nn.Module, input_size: tuple[int, ...], depth: int = 1, print_table: bool = True) -> ModelSummary:
    """Count parameters and FLOPs (``MAC_RULES``) per module group; print the table and return it.

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
        rule = next((rule for kind, rule in MAC_RULES.items() if isinstance(module, kind)), None)
        if rule is not None:
            group = _group(name, depth)

            def hook(mod, inputs, output, group=group, rule=rule):
                rows.setdefault(group, [0, 0])[1] += rule(mod, inputs, output)

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
