"""BatchNorm -> SyncBatchNorm conversion, only under an initialised process group.

mmsegmentation users hit "SyncBatchNorm expected an initialised process group" when they train a
SyncBN config on one GPU; here conversion is a no-op (with one log line) unless a torch.distributed
process group exists, so single-process runs keep plain BatchNorm.

PyTorch's SyncBatchNorm only synchronises GPU tensors; :class:`CPUSyncBatchNorm` does it for CPU
(gloo), so that a CPU DDP run normalises with the statistics of the global batch like a GPU run.
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
    """Return ``module`` with every BatchNorm*d replaced by a synchronised BatchNorm under a process group:
    ``nn.SyncBatchNorm`` for a module on GPU, :class:`CPUSyncBatchNorm` for one on CPU (move the module to
    its device first). Without an initialised process group the module is returned unchanged and an info
    line is logged.
    """
    if not distributed_ready():
        logger.info("convert_sync_batchnorm: no torch.distributed process group; keeping BatchNorm")
        return module
    on_cpu = all(t.device.type == "cpu" for t in [*module.parameters(), *module.buffers()])
    if not on_cpu:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cpu_sync(module)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _to_cpu_sync(child))
    return module


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: d(sum_r x_r)/dx_r summed over ranks."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _SumOverRanks.apply(grad)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks for CPU tensors (gloo), by differentiable all-reduces;
    PyTorch's ``nn.SyncBatchNorm`` (and DDP's check of it) accepts GPU modules only.

    Training under a group of more than one rank normalises (N, C, *) inputs with the mean and biased
    variance of the global batch (two passes: sums, then centred squares) and updates the running
    statistics with the unbiased variance, as BatchNorm does; otherwise it is plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, *) input, got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and distributed_ready() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype)
        sums = _SumOverRanks.apply(torch.cat([input.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = input - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / count
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
