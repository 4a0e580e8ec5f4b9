"""FENet: the information extractor (Eq. 2) and its mean-blur start, FEM-D / FEM-S against Eq. 3 / 4,
the order of the detail and semantic flows, channel widths and parameter counts against the paper,
the auxiliary stage heads and the loss of Eq. 5."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastseg.losses import cross_entropy, ohem_cross_entropy
from fastseg.models import build_model
from fastseg.models.fenet import FeatureEnhancementModule, InformationExtractor

NUM_CLASSES = 5
TINY = {"backbone": "resnet18", "channels": 16, "aux_channels": 16}


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def test_information_extractor_starts_as_feature_minus_local_mean():
    extractor = InformationExtractor(6)
    assert extractor.blur.groups == 6 and extractor.blur.kernel_size == (9, 9) and extractor.blur.bias is None
    assert extractor.blur.weight.requires_grad
    torch.testing.assert_close(extractor.blur.weight, torch.full((6, 1, 9, 9), 1 / 81))
    x = torch.randn(2, 6, 13, 11)
    local_mean = F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=True)
    torch.testing.assert_close(extractor(x), x - local_mean)  # Eq. 2 with K the 9x9 box filter
    with torch.no_grad():
        extractor.blur.weight.normal_()
    torch.testing.assert_close(extractor(x), x - F.conv2d(x, extractor.blur.weight, padding=4, groups=6))


@pytest.mark.parametrize("kind", ["detail", "semantic"])
def test_fem_matches_equations_3_and_4(kind):
    fem = FeatureEnhancementModule(8, kind)
    if kind == "detail":  # the target is the deeper, smaller map
        target, auxiliary = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 10, 12)
    else:
        target, auxiliary = torch.randn(2, 8, 10, 12), torch.randn(2, 8, 5, 6)
    # One extractor E per FEM, shared by both inputs (the official code).
    assert [name for name, _ in fem.named_children() if "extractor" in name] == ["extractor"]
    extracted = torch.cat([fem.extractor(target), _up(fem.extractor(auxiliary), target)], dim=1)
    kept = target if kind == "detail" else _up(auxiliary, target)
    expected = fem.refine(kept + fem.align(extracted))
    out = fem(target, auxiliary)
    assert out.shape == target.shape
    torch.testing.assert_close(out, expected)
    assert fem.align[0].conv.in_channels == 16 and fem.align[0].conv.kernel_size == (3, 3)
    assert fem.refine.conv.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        FeatureEnhancementModule(8, "structure")


def test_detail_flow_then_semantic_flow_order():
    """FEM-D targets strides 8, 16, 32 (bottom-up), then FEM-S targets 16, 8, 4 (top-down); each FEM's
    auxiliary input is the previous FEM's output, the semantic flow starting from D_3."""
    model = build_model("fenet", NUM_CLASSES, **TINY)
    head = model.decode_head
    calls = []
    for fem in [*head.detail_flow, *head.semantic_flow]:
        fem.register_forward_hook(lambda module, args, output: calls.append((module.kind, *args, output)))
    model(torch.randn(2, 3, 64, 64))
    widths = [(kind, target.shape[-1], auxiliary.shape[-1]) for kind, target, auxiliary, _ in calls]
    assert widths == [("detail", 8, 16), ("detail", 4, 8), ("detail", 2, 4),
                      ("semantic", 4, 2), ("semantic", 8, 4), ("semantic", 16, 8)]
    for previous, current in zip(calls, calls[1:]):
        assert current[2] is previous[3]  # D_{i-1} -> FEM-D i; D_3 -> first FEM-S; S_{i+1} -> FEM-S i
    assert calls[3][1] is calls[1][3]  # the first FEM-S enhances D_2
    assert head.fuse.conv.in_channels == 4 * 16


def test_paper_widths_and_parameter_counts():
    """Lateral channels 128 (ResNet-18) / 256 (ResNet-101); parameters without the training-only
    auxiliary heads: 16.8 M and 66.0 M (Table 3a), detail and semantic flows 8.9 M each (Table 2); with
    one shared extractor per FEM ResNet-101 gives 66.04 M (two per FEM: 66.17 M)."""
    def millions(module):
        return sum(p.numel() for p in module.parameters()) / 1e6

    for backbone, channels, paper in (("resnet18", 128, 16.8), ("resnet101", 256, 66.0)):
        model = build_model("fenet", 19, backbone=backbone)
        head = model.decode_head
        assert head.channels == channels and model.backbone.output_stride == 32
        assert head.ppm.bins == (1, 2, 3, 6)
        total = millions(model) - millions(model.stage_heads)
        flows = millions(head.detail_flow), millions(head.semantic_flow)
        print(f"fenet {backbone}: {total:.2f} M parameters (paper {paper} M); "
              f"detail flow {flows[0]:.2f} M, semantic flow {flows[1]:.2f} M (paper 8.9 M with ResNet-101)")
        assert abs(total - paper) / paper < 0.01
    assert abs(total - 66.04) < 0.005
    assert all(abs(f - 8.9) / 8.9 < 0.02 for f in flows)


def test_auxiliary_stage_heads_and_eval():
    model = build_model("fenet", NUM_CLASSES, **TINY)
    images = torch.randn(2, 3, 64, 64)
    outputs = model(images)
    assert {k: tuple(v.shape[-2:]) for k, v in outputs.items()} == {"out": (16, 16), "aux3": (4, 4), "aux4": (2, 2)}
    assert set(build_model("fenet", NUM_CLASSES, aux=False, **TINY)(images)) == {"out"}
    all_stages = build_model("fenet", NUM_CLASSES, aux_stages=(1, 2, 3, 4), **TINY)
    assert set(all_stages(images)) == {"out", "aux1", "aux2", "aux3", "aux4"}
    with pytest.raises(ValueError, match="aux_stages"):
        build_model("fenet", NUM_CLASSES, aux_stages=(0, 5), **TINY)

    calls = []
    for head in model.stage_heads.values():
        head.register_forward_hook(lambda *args: calls.append(1))
    model.eval()
    with torch.no_grad():
        logits = model(images)
        expected = _up(model.decode_head(model.backbone(images)), images)
    assert not calls
    torch.testing.assert_close(logits, expected)


def test_loss_is_equation_5():
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    labels[:, :3] = 255
    confident = 8.0 * F.one_hot(labels.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2)
    aux = torch.randn(2, NUM_CLASSES, 32, 32) + confident * (torch.arange(32) < 16)
    outputs = {"out": torch.randn(2, NUM_CLASSES, 8, 8), "aux3": aux, "aux4": torch.randn(2, NUM_CLASSES, 2, 2)}
    model = build_model("fenet", NUM_CLASSES, ohem_min_kept=40, aux_weight=0.5, **TINY)
    losses = model.loss(outputs, labels)
    torch.testing.assert_close(losses["out"], cross_entropy(outputs["out"], labels))
    for name in ("aux3", "aux4"):
        torch.testing.assert_close(losses[name], 0.5 * ohem_cross_entropy(outputs[name], labels, 0.7, 40))
    assert not torch.allclose(losses["aux3"], 0.5 * cross_entropy(aux, labels))  # OHEM drops the easy half
    torch.testing.assert_close(losses["total"], losses["out"] + losses["aux3"] + losses["aux4"])
    paper = build_model("fenet", NUM_CLASSES, **TINY)
    assert paper.aux_weight == 1.0
    assert (paper.aux_criterion.thresh, paper.aux_criterion.min_kept) == (0.7, 100000)
