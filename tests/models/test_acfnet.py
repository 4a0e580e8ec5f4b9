"""ACFNet: the ACF module against a direct evaluation of Eq. 2, 3 and 5, the head's layout and
channels (Sec. 4.1), the loss of Eq. 4 and its class-balanced / online-bootstrapping options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastseg.losses import cross_entropy, ohem_cross_entropy
from fastseg.models import build_model
from fastseg.models.acfnet import ACFNet, AttentionalClassFeatureModule
from test_paper_models import FusedOpRecorder

NUM_CLASSES = 5
TINY = {"backbone": "resnet18", "channels": 32, "acf_channels": 16, "aux_channels": 16}


def _class_centers(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Eq. 2 written out: (B, C, h, w), (B, K, h, w) -> (B, K, C)."""
    weighted = torch.einsum("bkhw,bchw->bkc", probs, features)
    return weighted / probs.sum(dim=(2, 3))[..., None]


@pytest.mark.parametrize("mode", ["sum", "concat", "center"])
def test_acf_module_matches_the_equations(mode):
    module = AttentionalClassFeatureModule(12, NUM_CLASSES, reduced_channels=8, out_channels=10, mode=mode)
    feature = torch.randn(2, 12, 6, 7)
    probs = torch.softmax(3 * torch.randn(2, NUM_CLASSES, 6, 7), dim=1)
    reduced = module.reduce(feature)
    centers = _class_centers(reduced, probs)
    if mode == "sum":  # Eq. 3
        attended = torch.einsum("bkhw,bkc->bchw", probs, centers)
    elif mode == "concat":  # Eq. 5
        attended = torch.einsum("bkhw,bkc->bkchw", probs, centers).flatten(1, 2)
    else:
        attended = centers.flatten(1)[..., None, None].expand(-1, -1, 6, 7)
    expected = module.refine(attended)
    with FusedOpRecorder() as recorder:
        out = module(feature, probs)
    assert out.shape == (2, 10, 6, 7)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert ("attentional_class_feature" if mode == "sum" else "soft_class_pool") in recorder.called


def test_acf_module_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        AttentionalClassFeatureModule(8, NUM_CLASSES, mode="max")


def test_paper_channels_and_head_layout():
    """ASPP with 512-channel branches and rates (12, 24, 36) at output stride 8; ACF reduction and
    output 512; fine head = concat(base 512, ACF 512) -> 1x1 -> classifier."""
    model = build_model("acfnet", 19, backbone="resnet18")
    head = model.decode_head
    assert model.backbone.output_stride == 8
    assert [b.conv.out_channels for b in head.aspp.branches] == [512] * 4
    assert [b.conv.dilation[0] for b in head.aspp.branches[1:]] == [12, 24, 36]
    assert head.acf.reduce.conv.out_channels == 512 and head.acf.reduce.conv.kernel_size == (1, 1)
    assert head.acf.refine.conv.out_channels == 512 and head.acf.refine.conv.kernel_size == (1, 1)
    assert head.fuse.conv.in_channels == 1024 and head.fuse.conv.kernel_size == (1, 1)
    assert head.classifier.out_channels == head.fine_classifier.out_channels == 19


def test_forward_uses_the_coarse_probabilities():
    """The fine logits depend on the coarse classifier (its softmax is the attention map), which gets
    gradient from the fine loss alone; eval mode skips the auxiliary head."""
    model = build_model("acfnet", NUM_CLASSES, **TINY)
    images = torch.randn(2, 3, 32, 32)
    outputs = model(images)
    assert set(outputs) == {"out", "coarse", "aux"}
    assert all(v.shape == (2, NUM_CLASSES, 4, 4) for v in outputs.values())
    outputs["out"].square().mean().backward()
    assert model.decode_head.classifier.weight.grad.abs().sum() > 0
    assert model.auxiliary_head.classifier.weight.grad is None

    calls = []
    model.auxiliary_head.register_forward_hook(lambda *args: calls.append(1))
    model.eval()
    with torch.no_grad():
        logits = model(images)
        features = model.backbone(images)
        coarse, fine = model.decode_head.forward_coarse_fine(features)
    assert not calls
    torch.testing.assert_close(logits, F.interpolate(fine, size=(32, 32), mode="bilinear", align_corners=False))


def _random_outputs(batch: int = 2, size: int = 8) -> dict[str, torch.Tensor]:
    return {name: torch.randn(batch, NUM_CLASSES, size, size) for name in ("out", "coarse", "aux")}


def _labels(batch: int = 2, size: int = 32) -> torch.Tensor:
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size))
    labels[:, :4] = 255
    return labels


def test_loss_is_equation_4():
    model = build_model("acfnet", NUM_CLASSES, **TINY)
    assert isinstance(model, ACFNet)
    outputs, labels = _random_outputs(), _labels()
    losses = model.loss(outputs, labels)
    for name, weight in {"aux": 0.4, "coarse": 0.6, "out": 0.7}.items():
        torch.testing.assert_close(losses[name], weight * cross_entropy(outputs[name], labels))
    torch.testing.assert_close(losses["total"], losses["aux"] + losses["coarse"] + losses["out"])
    no_aux = build_model("acfnet", NUM_CLASSES, aux=False, **TINY)
    assert set(no_aux.loss({k: v for k, v in outputs.items() if k != "aux"}, labels)) == {"coarse", "out", "total"}


def test_class_balanced_and_online_bootstrapping_options():
    outputs, labels = _random_outputs(), _labels()
    balanced = build_model("acfnet", NUM_CLASSES, class_balanced=True, **TINY).loss(outputs, labels)
    torch.testing.assert_close(balanced["coarse"], 0.6 * cross_entropy(outputs["coarse"], labels, class_balanced=True))

    # confident and right on the left half: online bootstrapping drops those pixels (p > 0.7)
    confident = 8.0 * F.one_hot(labels.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2)
    outputs["out"] = torch.randn(2, NUM_CLASSES, 32, 32) + confident * (torch.arange(32) < 16)
    bootstrapped = build_model("acfnet", NUM_CLASSES, ohem=True, ohem_min_kept=50, **TINY).loss(outputs, labels)
    expected = 0.7 * ohem_cross_entropy(outputs["out"], labels, thresh=0.7, min_kept=50)
    torch.testing.assert_close(bootstrapped["out"], expected)
    assert not torch.allclose(bootstrapped["out"], 0.7 * cross_entropy(outputs["out"], labels))
    defaults = build_model("acfnet", NUM_CLASSES, ohem=True, **TINY).criterion
    assert (defaults.thresh, defaults.min_kept) == (0.7, 100000)
    with pytest.raises(ValueError, match="class_balanced and ohem"):
        build_model("acfnet", NUM_CLASSES, class_balanced=True, ohem=True, **TINY)
