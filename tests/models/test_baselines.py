"""Registered baselines: registry, train/eval outputs, losses, a short overfit, channels_last, torch.compile."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastseg.models import EncoderDecoder, build_model, list_models, register_model
from fastseg.models.heads import ASPP, DeepLabV3PlusHead, NonLocalBlock, PyramidPoolingModule, aspp_rates

BASELINES = ["fcn", "pspnet", "deeplabv3", "deeplabv3plus", "nonlocal"]
NUM_CLASSES = 5
TINY = {"backbone": "resnet18", "channels": 32, "aux_channels": 16}


def _labels(batch: int, size: int, cell: int = 1) -> torch.Tensor:
    """Random labels constant on cell x cell squares, with the first three rows ignored (255)."""
    grid = torch.randint(0, NUM_CLASSES, (batch, size // cell, size // cell))
    labels = grid.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    labels[:, :3] = 255
    return labels


def test_registry_lists_the_baselines():
    assert set(BASELINES) <= set(list_models())
    assert list_models() == sorted(list_models())
    with pytest.raises(ValueError, match="unknown model 'segformer'.*pspnet"):
        build_model("segformer", NUM_CLASSES)
    with pytest.raises(ValueError, match="already registered"):
        register_model("fcn")(lambda **kw: nn.Identity())


@pytest.mark.parametrize("name", BASELINES)
def test_train_and_eval_outputs(name):
    model = build_model(name, NUM_CLASSES, **TINY)
    assert isinstance(model, EncoderDecoder)
    images, labels = torch.randn(2, 3, 32, 32), _labels(2, 32)
    outputs = model(images)
    head_size = 8 if name == "deeplabv3plus" else 4  # stride 4 / output stride 8
    assert set(outputs) == {"out", "aux"}
    assert outputs["out"].shape == (2, NUM_CLASSES, head_size, head_size)
    assert outputs["aux"].shape == (2, NUM_CLASSES, 4, 4)
    losses = model.loss(outputs, labels)
    assert set(losses) == {"out", "aux", "total"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    torch.testing.assert_close(losses["total"], losses["out"] + losses["aux"])
    losses["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 48, 40))
    assert logits.shape == (1, NUM_CLASSES, 48, 40)


def test_loss_weights_and_ignore_index():
    model = build_model("fcn", NUM_CLASSES, **TINY)
    outputs = {"out": torch.randn(2, NUM_CLASSES, 8, 8), "aux": torch.randn(2, NUM_CLASSES, 8, 8)}
    labels = torch.full((2, 64, 64), 255)
    labels[:, 10:30, 20:50] = torch.randint(0, NUM_CLASSES, (2, 20, 30))
    up = nn.functional.interpolate(outputs["aux"], size=(64, 64), mode="bilinear", align_corners=False)
    valid = labels != 255
    expected_aux = nn.functional.cross_entropy(up.permute(0, 2, 3, 1)[valid], labels[valid])
    losses = model.loss(outputs, labels)
    torch.testing.assert_close(losses["aux"], 0.4 * expected_aux)
    no_aux = build_model("fcn", NUM_CLASSES, aux=False, **TINY)
    assert no_aux.auxiliary_head is None
    assert set(no_aux(torch.randn(2, 3, 32, 32))) == {"out"}


@pytest.mark.parametrize("name", BASELINES)
def test_short_overfit_lowers_the_total_loss(name, fit_one_batch):
    """Labels constant on the 8x8 cells of the output stride, so that stride-8 logits can fit them."""
    model = build_model(name, NUM_CLASSES, dropout=0.0, **TINY)
    images, labels = torch.randn(2, 3, 32, 32), _labels(2, 32, cell=8)
    history = fit_one_batch(model, images, labels, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), steps=15)
    print(f"{name}: total loss {history[0]:.3f} -> {history[-1]:.3f}")
    assert history[-1] < 0.7 * history[0]


@pytest.mark.parametrize("name", ["deeplabv3plus", "nonlocal"])
def test_channels_last_matches_contiguous(name):
    """float64, so that the layouts' different float32 summation orders do not hide a layout bug."""
    model = build_model(name, NUM_CLASSES, **TINY).eval().double()
    images = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(images)
        actual = model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected)


def test_compile_fullgraph_forward_backward():
    model = build_model("pspnet", NUM_CLASSES, dropout=0.0, **TINY)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    images, labels = torch.randn(2, 3, 32, 32), _labels(2, 32)
    eager = build_model("pspnet", NUM_CLASSES, dropout=0.0, **TINY)
    eager.load_state_dict(model.state_dict())
    compiled_total = model.loss(compiled(images), labels)["total"]
    eager_total = eager.loss(eager(images), labels)["total"]
    torch.testing.assert_close(compiled_total, eager_total)
    compiled_total.backward()
    eager_total.backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_head_pieces():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    aspp = ASPP(16, 8, rates=(1, 2, 3))
    assert [b.conv.dilation[0] for b in aspp.branches] == [1, 1, 2, 3]
    assert aspp(torch.randn(2, 16, 9, 7)).shape == (2, 8, 9, 7)
    ppm = PyramidPoolingModule(16, 4)
    assert ppm.bins == (1, 2, 3, 6) and ppm(torch.randn(2, 16, 12, 12)).shape == (2, 16 + 4 * 4, 12, 12)
    head = DeepLabV3PlusHead(32, 8, 16, NUM_CLASSES, rates=(1, 2, 3))
    assert head.skip.conv.out_channels == 48
    features = (torch.randn(2, 8, 16, 16), None, None, torch.randn(2, 32, 4, 4))
    assert head(features).shape == (2, NUM_CLASSES, 16, 16)
    block = NonLocalBlock(8).eval()
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(block(x), x)  # identity at initialisation (zero BN weight on W)
    nn.init.ones_(block.out[1].weight)
    assert not torch.allclose(block(x), x)
