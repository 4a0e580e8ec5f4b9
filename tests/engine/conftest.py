"""Fixtures of the training tests: a tiny run config (ResNet-18 FCN with narrow heads on 32-px crops of
small synthetic scenes) that trains a step in well under a second on one CPU thread."""
from __future__ import annotations

import pytest

from fastseg.engine.config import apply_overrides, load_config

TINY_OVERRIDES = [
    "model.name=fcn",
    "model.options={output_stride: 8, channels: 16, aux_channels: 8, dropout: 0.0}",
    "data.train={split: train, size: [48, 64], length: 12}",
    "data.val={split: val, size: [48, 64], length: 2}",
    "data.augment={scale: [0.75, 1.25], crop: [32, 32], flip: 0.5}",
    "evaluate={mode: whole, scales: [1.0], flip: false, boundary: false}",
    "train.iterations=4",
    "train.batch_size=2",
    "train.lr=0.01",
    "train.workers=0",
    "train.log_interval=1",
    "train.eval_interval=0",
    "train.checkpoint_interval=0",
    "train.num_predictions=1",
    "train.tensorboard=false",
]


def tiny_config(*overrides: str) -> dict:
    """The default recipe shrunk by TINY_OVERRIDES, then ``overrides``."""
    return apply_overrides(load_config("default"), [*TINY_OVERRIDES, *overrides])


@pytest.fixture
def make_tiny_config():
    return tiny_config
