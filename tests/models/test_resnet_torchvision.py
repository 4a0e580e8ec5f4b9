"""ResNet-18/34/50/101 backbones against torchvision's ResNet: C2..C5 in eval mode, float64, to rounding.

torchvision's model is randomly initialised, its BatchNorm scales, shifts and running statistics are
randomised (so eval-mode BN is no identity), and its state_dict is loaded into ours through
``load_pretrained``: one comparison checks the key mapping and the architecture (strides, paddings,
dilation placement, shortcuts) together. Runs where torchvision is installed (CI's venv with it).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastseg.models import load_pretrained
from fastseg.models.backbones import build_backbone

torchvision_models = pytest.importorskip(
    "torchvision.models", reason="torchvision is not installed (CI runs this in its venv with torchvision)")

# our output stride -> torchvision's replace_stride_with_dilation (layer2, layer3, layer4)
DILATION_OF_STRIDE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def _randomise_batchnorm(model: nn.Module) -> None:
    """Random BN affine parameters and running statistics, so that eval-mode BN changes the features."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)


def _torchvision_stages(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """C2..C5 of a torchvision ResNet: its forward up to layer4 (no pooling, no classifier)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    stages = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        stages.append(x)
    return stages


def _torchvision_resnet(depth: int, output_stride: int) -> nn.Module:
    """torchvision's resnet<depth>, randomly initialised; a skip where torchvision cannot build that stride."""
    try:
        return getattr(torchvision_models, f"resnet{depth}")(
            weights=None, replace_stride_with_dilation=DILATION_OF_STRIDE[output_stride])
    except NotImplementedError as error:  # BasicBlock (ResNet-18/34) raises "Dilation > 1 not supported"
        pytest.skip(f"torchvision's resnet{depth} has no output stride {output_stride}: {error}")


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_features_match_torchvision(depth, output_stride):
    theirs = _torchvision_resnet(depth, output_stride)
    _randomise_batchnorm(theirs)
    theirs = theirs.double().eval()
    ours = build_backbone(f"resnet{depth}", output_stride=output_stride).double().eval()
    report = load_pretrained(ours, theirs.state_dict())
    assert report.complete, str(report)
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]

    images = torch.randn(2, 3, 45, 62, dtype=torch.float64)  # odd, non-square: every stride rounds up
    with torch.no_grad():
        expected = _torchvision_stages(theirs, images)
        features = ours(images)
    assert len(features) == 4
    for stage, (feature, reference) in enumerate(zip(features, expected), start=2):
        scale = reference.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(feature, reference, rtol=1e-12, atol=1e-12 * scale, msg=f"C{stage}")
