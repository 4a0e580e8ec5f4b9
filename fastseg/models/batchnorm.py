"""BatchNorm -> SyncBatchNorm conversion, only under an initialised process group.

mmsegmentation users hit "SyncBatchNorm expected an initialised process group" when they train a
SyncBN config on one GPU; here conversion is a no-op (with one log line) unless a torch.distributed
process group exists, so single-process runs keep plain BatchNorm.

PyTorch's SyncBatchNorm only synchronises GPU tensors; :class:`SyncBatchNorm` adds the CPU (gloo)
path, so that a CPU DDP run normalises with the statistics of the global batch like a GPU run.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def distributed_ready() -> bool:
    """True when torch.distributed is built and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every BatchNorm*d replaced by SyncBatchNorm under a process group.

    Without an initialised process group the module is returned unchanged and an info line is logged.
    """
    if not distributed_ready():
        logger.info("convert_sync_batchnorm: no torch.distributed process group; keeping BatchNorm")
        return module
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for layer in module.modules():
        if type(layer) is nn.SyncBatchNorm:
            # torch's converter always builds nn.SyncBatchNorm; ours only adds a forward path for CPU.
            layer.__class__ = SyncBatchNorm
    return module


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: d(sum_r x_r)/dx_r summed over ranks."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _SumOverRanks.apply(grad, ctx.group), None


class SyncBatchNorm(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that also synchronises CPU inputs (gloo), by differentiable all-reduces.

    CPU training under a group of more than one rank normalises (N, C, *) inputs with the mean and
    biased variance of the global batch (two passes: sums, then centred squares) and updates the running
    statistics with the unbiased variance, as BatchNorm does; every other case is ``nn.SyncBatchNorm``'s.
    """

    def forward(self, input: Tensor) -> Tensor:
        group = self.process_group or dist.group.WORLD
        if input.device.type != "cpu" or not (self.training and distributed_ready()):
            return super().forward(input)
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype)
        sums = _SumOverRanks.apply(torch.cat([input.sum(dims), local_count]), group)
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = input - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims), group) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out
