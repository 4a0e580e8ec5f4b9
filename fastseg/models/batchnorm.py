"""BatchNorm -> SyncBatchNorm conversion, only under an initialised process group.

mmsegmentation users hit "SyncBatchNorm expected an initialised process group" when they train a
SyncBN config on one GPU; here conversion is a no-op (with one log line) unless a torch.distributed
process group exists, so single-process runs keep plain BatchNorm.
"""
from __future__ import annotations

import logging

import torch.distributed as dist
from torch import nn

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
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
