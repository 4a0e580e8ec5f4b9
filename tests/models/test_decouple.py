"""DecoupleSegNet: body generation against F.grid_sample, edge = F - F_body and Eq. 2, the final feature,
the weighted losses (Eq. 3-5), inference without the body/edge heads, and the paper's layer sizes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_paper_models import _batch

from fastseg.losses import boundary_ohem_cross_entropy, edge_bce_loss, edge_target, relaxed_boundary_loss
from fastseg.models import build_model, summary
from fastseg.models.decouple import BodyGeneration, DecoupleSegNet

NUM_CLASSES = 5
TINY = {"backbone": "resnet18", "channels": 16}


def _grid_sample_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of x at (x + dx, y + dy) pixels, coordinates clipped to the image (align_corners=True)."""
    height, width = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=x.dtype), torch.arange(width, dtype=x.dtype), indexing="ij")
    grid_x = 2 * (xs + flow[:, 0]) / (width - 1) - 1
    grid_y = 2 * (ys + flow[:, 1]) / (height - 1) - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def test_body_generation_is_a_flow_warp_of_the_input():
    """Eq. 1: flow = conv3x3(F || up(down(F))), F_body = bilinear sample of F at p + flow(p)."""
    module = BodyGeneration(8).double()
    with torch.no_grad():
        module.flow.weight.mul_(20)  # flows of several pixels: samples far from p and beyond the border
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64, requires_grad=True)
    body = module(x)

    low = F.interpolate(module.down(x), size=(9, 11), mode="bilinear", align_corners=False)
    flow = F.conv2d(torch.cat([x, low], dim=1), module.flow.weight, padding=1)
    assert flow.abs().max() > 3, "the test needs flows reaching past the neighbouring pixels"
    expected = _grid_sample_warp(x, flow)
    torch.testing.assert_close(body, expected)

    grad = torch.randn_like(body)
    got = torch.autograd.grad(body, [x, module.flow.weight], grad)
    want = torch.autograd.grad(expected, [x, module.flow.weight], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_zero_flow_gives_body_equal_to_the_feature():
    module = BodyGeneration(4)
    torch.nn.init.zeros_(module.flow.weight)
    x = torch.randn(2, 4, 6, 7)
    torch.testing.assert_close(module(x), x)


def test_edge_is_feature_minus_body_fused_with_the_fine_feature():
    """Eq. 2: F_edge = gamma(up(F - F_body) || F_fine) with F_fine the 48-channel 1x1 ConvBNReLU of C1."""
    model = build_model("decouple_fcn", NUM_CLASSES, **TINY).eval()
    with torch.no_grad():
        model.body_generation.flow.weight.mul_(10)
    context = torch.randn(2, 16, 5, 6)
    c1 = torch.randn(2, 64, 10, 12)
    received = []
    model.edge_preservation.register_forward_pre_hook(lambda mod, args: received.append(args[0]))
    with torch.no_grad():
        body, edge = model.decouple(context, c1)
        torch.testing.assert_close(body, model.body_generation(context))
        assert (body - context).abs().max() > 0.1, "the warp must move the feature for the check to mean something"
        torch.testing.assert_close(received[0], context - body)  # F_edge's input is F - F_body
        residual = F.interpolate(context - body, size=(10, 12), mode="bilinear", align_corners=False)
        fine = model.edge_preservation.fine(c1)
        assert fine.shape == (2, 48, 10, 12)
        expected = F.conv2d(torch.cat([residual, fine], dim=1), model.edge_preservation.fuse.weight)
    torch.testing.assert_close(edge, expected)


@pytest.mark.parametrize("name", ["decouple_fcn", "decouple_pspnet", "decouple_deeplabv3plus"])
def test_final_feature_and_inference_without_body_and_edge_heads(name):
    """F_hat = up(F_body) + F_edge, fused with up(F); eval runs neither the body head nor the edge head."""
    model = build_model(name, NUM_CLASSES, **TINY)
    images = torch.randn(2, 3, 48, 40)
    outputs = model(images)
    assert set(outputs) == {"out", "body", "edge"}
    assert outputs["out"].shape == (2, NUM_CLASSES, 12, 10)
    assert outputs["body"].shape == (2, NUM_CLASSES, 6, 5)
    assert outputs["edge"].shape == (2, 1, 12, 10)

    model.eval()
    captured, calls = {}, []
    model.body_generation.register_forward_hook(lambda mod, args, out: captured.update(body=out))
    model.edge_preservation.register_forward_hook(lambda mod, args, out: captured.update(edge=out))
    model.decode_head.register_forward_hook(lambda mod, args, out: calls.append("decode_head.forward"))
    model.fuse.register_forward_pre_hook(lambda mod, args: captured.update(fused_input=args[0]))
    for head in (model.body_head, model.edge_head):
        head.register_forward_hook(lambda mod, args, out: calls.append("body/edge head"))
    with torch.no_grad():
        logits = model(images)
        context = model.decode_head.forward_features(model.backbone(images))
    assert logits.shape == (2, NUM_CLASSES, 48, 40)
    assert not calls, f"inference ran {calls}"
    up = lambda t: F.interpolate(t, size=(12, 10), mode="bilinear", align_corners=False)  # noqa: E731
    expected = torch.cat([up(context), up(captured["body"]) + captured["edge"]], dim=1)
    torch.testing.assert_close(captured["fused_input"], expected)


def _random_outputs(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stride-4 final / edge logits and stride-8 body logits; the edge logits exceed 0.8 on half the image."""
    batch, height, width = labels.shape
    edge = torch.randn(batch, 1, height // 4, width // 4)
    edge[..., : width // 8] += 3
    return {
        "out": torch.randn(batch, NUM_CLASSES, height // 4, width // 4),
        "body": torch.randn(batch, NUM_CLASSES, height // 8, width // 8),
        "edge": edge,
    }


def test_losses_are_the_weighted_paper_terms():
    """Eq. 3-4 with lambda_1..5 set to (0.5, 2, 1, 3, 0.7) against the loss functions called directly."""
    model = build_model("decouple_deeplabv3plus", NUM_CLASSES, body_weight=0.5, edge_weight=2.0, bce_weight=3.0,
                        ohem_weight=0.7, **TINY)
    _, labels = _batch(size=64, cell=16)
    outputs = _random_outputs(labels)
    losses = model.loss(outputs, labels)
    assert set(losses) == {"body", "edge_bce", "edge_ohem", "out", "total"}
    up = F.interpolate(outputs["out"], size=(64, 64), mode="bilinear", align_corners=False)
    edges = edge_target(labels, radius=2)
    expected = {
        "body": 0.5 * relaxed_boundary_loss(outputs["body"], labels, kernel_size=3),
        "edge_bce": 2.0 * 3.0 * edge_bce_loss(outputs["edge"], edges, labels != 255),
        "edge_ohem": 2.0 * 0.7 * boundary_ohem_cross_entropy(outputs["out"], outputs["edge"], labels, 0.8, 0.1),
        "out": F.cross_entropy(up, labels, ignore_index=255),
    }
    for key, value in expected.items():
        assert value > 0.05, f"{key}: the check needs a non-trivial loss"
        torch.testing.assert_close(losses[key], value, msg=key)
    torch.testing.assert_close(losses["total"], sum(expected.values()))


def test_default_loss_weights_and_thresholds_are_the_papers():
    """lambda_1 = lambda_2 = lambda_3 = lambda_5 = 1, lambda_4 = 25; t_b = 0.8, K = 0.1 N; edge radius 2."""
    model = build_model("decouple_fcn", NUM_CLASSES, **TINY)
    assert model.body_weight == 1.0
    assert model.edge_bce_loss.loss_weight == 25.0 and model.edge_bce_loss.radius == 2
    assert model.edge_ohem_loss.loss_weight == 1.0
    assert (model.edge_ohem_loss.edge_thresh, model.edge_ohem_loss.keep_ratio) == (0.8, 0.1)
    assert model.body_loss.kernel_size == 3
    assert model.auxiliary_head is None, "Eq. 3 has no auxiliary C3 loss"
    _, labels = _batch(size=32, cell=8)
    outputs = _random_outputs(labels)
    losses = model.loss(outputs, labels)
    expected_bce = 25 * edge_bce_loss(outputs["edge"], edge_target(labels), labels != 255)
    torch.testing.assert_close(losses["edge_bce"], expected_bce)
    with_aux = build_model("decouple_fcn", NUM_CLASSES, aux=True, aux_channels=8, **TINY)
    assert set(with_aux(torch.randn(2, 3, 32, 32))) == {"out", "body", "edge", "aux"}


def test_short_overfit_with_the_paper_weights_on_resolvable_boundaries():
    """The paper's weights (lambda_4 = 25) on 16-pixel cells, whose boundaries a stride-4 edge map can resolve."""
    model = build_model("decouple_deeplabv3plus", NUM_CLASSES, dropout=0.0, **TINY)
    images, labels = _batch(cell=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(20):
        losses = model.loss(model(images), labels)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    trace = ", ".join(f"{k} {history[0][k]:.3f} -> {history[-1][k]:.3f}" for k in history[0])
    print(f"decouple_deeplabv3plus: {trace}")
    assert history[-1]["total"] < 0.7 * history[0]["total"]
    assert history[-1]["edge_bce"] < 0.7 * history[0]["edge_bce"]


def test_paper_layer_sizes_and_parameter_counts():
    """Two depthwise 3x3 stride-2 convs, a 3x3 conv to a 2-channel flow, 48-channel F_fine, 256 channels."""
    model = build_model("decouple_deeplabv3plus", 19, backbone="resnet50")
    assert isinstance(model, DecoupleSegNet) and model.decode_head.channels == 256
    downs = [block.conv for block in model.body_generation.down]
    assert len(downs) == 2
    for conv in downs:
        assert (conv.kernel_size, conv.stride, conv.groups, conv.in_channels) == ((3, 3), (2, 2), 256, 256)
    assert (model.body_generation.flow.in_channels, model.body_generation.flow.out_channels) == (512, 2)
    assert model.body_generation.flow.kernel_size == (3, 3)
    assert model.edge_preservation.fine.conv.out_channels == 48
    assert model.edge_preservation.fuse.kernel_size == (1, 1)
    assert model.edge_head.classifier.out_channels == 1
    result = summary(model, (1, 3, 64, 64), depth=1, print_table=True)
    added = {name: params for name, params, _ in result.rows
             if name in ("body_generation", "edge_preservation", "fuse", "body_head", "edge_head")}
    print(f"decoupled module parameters (ResNet-50, 19 classes): {added}, total {sum(added.values()):,}")
    assert added["body_generation"] == 2 * (256 * 9 + 2 * 256) + 512 * 2 * 9


def test_fcn_and_psp_heads_are_the_official_ones():
    # Official DecoupleSegNet: FCN head = one 3x3 conv 2048 -> 256 + BN + ReLU; PSP bottleneck = 1x1
    # conv (2048 + 4 x 256) -> 256 + BN + ReLU after the PPM.
    with torch.device("meta"):
        fcn_model = build_model("decouple_fcn", 19, backbone="resnet50")
        psp_model = build_model("decouple_pspnet", 19, backbone="resnet50")
    convs = fcn_model.decode_head.convs
    assert len(convs) == 1 and fcn_model.decode_head.fuse is None
    assert sum(p.numel() for p in convs.parameters()) == 2048 * 256 * 9 + 2 * 256
    bottleneck = psp_model.decode_head.bottleneck
    assert sum(p.numel() for p in bottleneck.parameters()) == (2048 + 4 * 256) * 256 + 2 * 256
    assert bottleneck.conv.kernel_size == (1, 1)
