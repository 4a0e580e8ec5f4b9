"""SyncBatchNorm conversion happens only under an initialised process group."""
from __future__ import annotations

import logging

import pytest
import torch.distributed as dist
from torch import nn

import torch

from fastseg.models import build_model, convert_sync_batchnorm
from fastseg.models.batchnorm import CPUSyncBatchNorm


def _norms(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_without_a_process_group_it_is_a_no_op(caplog):
    assert not dist.is_initialized()
    model = build_model("pspnet", 3, backbone="resnet18", channels=16, aux_channels=8)
    with caplog.at_level(logging.INFO, logger="fastseg.models.batchnorm"):
        converted = convert_sync_batchnorm(model)
    assert converted is model
    assert _norms(model) == {nn.BatchNorm2d}
    assert "no torch.distributed process group" in caplog.text


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_under_a_process_group_every_batchnorm_is_converted(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_model("deeplabv3plus", 3, backbone="resnet18", channels=16, aux_channels=8, dropout=0.0)
        model.train()
        images = torch.randn(2, 3, 32, 32)
        expected = model(images)["out"]
        count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        converted = convert_sync_batchnorm(model)  # a CPU module: torch's SyncBatchNorm is GPU-only
        assert _norms(converted) == {CPUSyncBatchNorm}
        assert sum(isinstance(m, CPUSyncBatchNorm) for m in converted.modules()) == count
        # One rank: plain BatchNorm (the 2-rank equivalence is tests/engine/test_ddp.py's).
        torch.testing.assert_close(converted(images)["out"], expected)
    finally:
        dist.destroy_process_group()
