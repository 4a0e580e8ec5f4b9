"""summary(): parameter totals and conv/linear FLOPs per module group."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastseg.models import build_model, summary


def test_parameters_match_the_model_and_rows_add_up(capsys):
    model = build_model("deeplabv3plus", 4, backbone="resnet18", channels=16, aux_channels=8)
    model.train()
    result = summary(model, (3, 32, 32))
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert sum(params for _, params, _ in result.rows) == result.total_params
    assert [name for name, _, _ in result.rows] == ["backbone", "decode_head", "auxiliary_head"]
    assert dict((n, p) for n, p, _ in result.rows)["decode_head"] == sum(
        p.numel() for p in model.decode_head.parameters()
    )
    assert model.training
    printed = capsys.readouterr().out
    assert "backbone" in printed and f"{result.total_params:,}" in printed
    deeper = summary(model, (1, 3, 32, 32), depth=2, print_table=False)
    assert "backbone.layer3" in [n for n, _, _ in deeper.rows]
    assert deeper.total_macs == result.total_macs and deeper.total_params == result.total_params


def test_flops_are_twice_the_conv_and_linear_macs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.grouped(self.conv(x))
            return self.fc(x.mean(dim=(2, 3)))

    result = summary(Net(), (2, 3, 16, 16), print_table=False)
    conv = 2 * 8 * 8 * 8 * 3 * 9  # outputs (2, 8, 8, 8) x 3 inputs x 3x3
    grouped = 2 * 8 * 8 * 8 * 2 * 9  # 8 / 4 = 2 input channels per group
    fc = 2 * 5 * 8
    assert dict((n, m) for n, _, m in result.rows) == {"conv": conv, "grouped": grouped, "fc": fc}
    assert result.total_flops == 2 * (conv + grouped + fc)
    assert result.total_params == sum(p.numel() for p in Net().parameters())


def test_bad_input_size_is_rejected():
    with pytest.raises(ValueError, match="input_size"):
        summary(nn.Conv2d(3, 3, 1), (3, 8))
