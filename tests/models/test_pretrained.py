"""load_pretrained: torchvision, timm (plain and deep stem) and mmsegmentation V1c key formats.

The checkpoints are generated here with the key names and shapes those libraries use, written out
from the ResNet layout (not from this package's model), with random values.
"""
from __future__ import annotations

import logging

import pytest
import torch

from fastseg.models import build_model, load_pretrained
from fastseg.models.backbones import ResNet

BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def _bn(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(channels) + 0.5,
        f"{prefix}.bias": torch.randn(channels),
        f"{prefix}.running_mean": torch.randn(channels),
        f"{prefix}.running_var": torch.rand(channels) + 0.5,
    }


def _conv(name: str, out_channels: int, in_channels: int, kernel: int) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": torch.randn(out_channels, in_channels, kernel, kernel)}


def imagenet_resnet_state_dict(depth: int, stem: str = "torchvision") -> dict[str, torch.Tensor]:
    """Random weights named as torchvision's / timm's ResNet (``stem``: "torchvision", "timm_deep",
    "mmseg_v1c"; the mmseg format has the ``backbone.`` prefix and no classifier)."""
    state: dict[str, torch.Tensor] = {}
    if stem == "torchvision":
        state |= _conv("conv1", 64, 3, 7) | _bn("bn1", 64)
    elif stem == "timm_deep":
        state |= _conv("conv1.0", 32, 3, 3) | _bn("conv1.1", 32) | _conv("conv1.3", 32, 32, 3) | _bn("conv1.4", 32)
        state |= _conv("conv1.6", 64, 32, 3) | _bn("bn1", 64)
    else:
        state |= _conv("stem.0", 32, 3, 3) | _bn("stem.1", 32) | _conv("stem.3", 32, 32, 3) | _bn("stem.4", 32)
        state |= _conv("stem.6", 64, 32, 3) | _bn("stem.7", 64)
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth]), start=1):
        for index in range(blocks):
            p = f"layer{stage}.{index}"
            if bottleneck:
                state |= _conv(f"{p}.conv1", planes, inplanes, 1) | _bn(f"{p}.bn1", planes)
                state |= _conv(f"{p}.conv2", planes, planes, 3) | _bn(f"{p}.bn2", planes)
                state |= _conv(f"{p}.conv3", planes * 4, planes, 1) | _bn(f"{p}.bn3", planes * 4)
            else:
                state |= _conv(f"{p}.conv1", planes, inplanes, 3) | _bn(f"{p}.bn1", planes)
                state |= _conv(f"{p}.conv2", planes, planes, 3) | _bn(f"{p}.bn2", planes)
            if index == 0 and (stage > 1 or inplanes != planes * expansion):
                state |= _conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                state |= _bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    if stem == "mmseg_v1c":
        return {f"backbone.{k}": v for k, v in state.items()}
    return state | {"fc.weight": torch.randn(1000, inplanes), "fc.bias": torch.randn(1000)}


def _assert_landed(model: ResNet, state: dict[str, torch.Tensor], rename) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[rename(key)], value, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_keys_load_into_the_matching_parameters(depth):
    state = imagenet_resnet_state_dict(depth, "torchvision")
    model = ResNet(depth=depth, output_stride=8)
    report = load_pretrained(model, state)
    assert report.complete, str(report)
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(state) - 2
    _assert_landed(model, state, lambda k: k)
    assert model.layer1[0].conv1.weight.data_ptr() != state["layer1.0.conv1.weight"].data_ptr()


def test_timm_deep_stem_keys_load():
    state = imagenet_resnet_state_dict(50, "timm_deep")
    model = ResNet(depth=50, deep_stem=True)
    report = load_pretrained(model, state)
    assert report.complete, str(report)
    _assert_landed(model, state, lambda k: k)
    torch.testing.assert_close(model.conv1[6].weight, state["conv1.6.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.conv1[4].running_var, state["conv1.4.running_var"], rtol=0, atol=0)


def test_mmseg_v1c_stem_and_prefix_are_mapped():
    state = imagenet_resnet_state_dict(18, "mmseg_v1c")
    model = ResNet(depth=18, deep_stem=True)
    report = load_pretrained(model, {"state_dict": state, "meta": {}})
    assert report.complete, str(report)
    torch.testing.assert_close(model.conv1[0].weight, state["backbone.stem.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.bn1.running_mean, state["backbone.stem.7.running_mean"], rtol=0, atol=0)
    torch.testing.assert_close(model.layer4[1].bn2.bias, state["backbone.layer4.1.bn2.bias"], rtol=0, atol=0)


def test_missing_unexpected_and_mismatched_keys_are_reported(caplog):
    state = imagenet_resnet_state_dict(18, "torchvision")
    del state["layer2.0.bn1.running_var"]
    state["layer5.0.conv1.weight"] = torch.randn(3, 3, 3, 3)
    state["layer3.1.conv2.weight"] = torch.randn(256, 256, 1, 1)
    model = ResNet(depth=18)
    before = model.layer3[1].conv2.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="fastseg.models.backbones.pretrained"):
        report = load_pretrained(model, state)
    assert not report.complete
    assert report.missing == ["layer2.0.bn1.running_var", "layer3.1.conv2.weight"]
    assert report.unexpected == ["layer5.0.conv1.weight"]
    assert report.mismatched == ["layer3.1.conv2.weight: checkpoint (256, 256, 1, 1) vs model (256, 256, 3, 3)"]
    torch.testing.assert_close(model.layer3[1].conv2.weight, before, rtol=0, atol=0)
    torch.testing.assert_close(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"], rtol=0, atol=0)
    assert "layer5.0.conv1.weight" in caplog.text and "missing (2)" in str(report)


def test_plain_checkpoint_into_deep_stem_reports_the_stem():
    report = load_pretrained(ResNet(depth=18, deep_stem=True), imagenet_resnet_state_dict(18, "torchvision"))
    assert report.unexpected == ["conv1.weight"]
    assert set(report.missing) == {f"conv1.{i}.{p}" for i in (0, 3, 6) for p in ("weight",)} | {
        f"conv1.{i}.{p}" for i in (1, 4) for p in ("weight", "bias", "running_mean", "running_var")
    }


def test_file_path_url_and_segmentor_target(tmp_path, monkeypatch):
    state = imagenet_resnet_state_dict(18, "torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = build_model("fcn", 3, backbone="resnet18", channels=16, pretrained=path)
    _assert_landed(model.backbone, state, lambda k: k)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    other = ResNet(depth=18)
    report = load_pretrained(other, path.as_uri())
    assert report.complete, str(report)
    _assert_landed(other, state, lambda k: k)
