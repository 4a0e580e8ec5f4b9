"""The paper recipes' training choices, each against its paper's words (or the official scripts)."""
from __future__ import annotations

import pytest
import torch

from fastseg.engine.config import load_config, packaged_configs
from fastseg.losses import cross_entropy
from fastseg.engine.lr_schedule import PolyLR
from fastseg.models import build_model

PAPER_RECIPES = [name for name in packaged_configs() if not name.startswith("_base_/") and name != "default"]


def build_recipe_model(name: str, **changes):
    """The recipe's model on ResNet-18 (cheap), on the meta device, with ``changes`` to its options."""
    config = load_config(name)
    options = {**config["model"]["options"], **changes}
    with torch.device("meta"):
        return build_model(config["model"]["name"], config["data"]["num_classes"], backbone="resnet18", **options)


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_poly_schedule_decays_to_zero_as_in_the_papers(name):
    # lr = base * (1 - iter / max_iter)^power (ACFNet Sec. 4.2, DecoupleSegNet Sec. 4, CSFRNet, FENet Sec. 4.1).
    train = load_config(name)["train"]
    assert train["min_lr"] == 0.0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train["lr"])
    scheduler = PolyLR(optimizer, train["iterations"], train["poly_power"], train["min_lr"])
    half = train["iterations"] // 2
    scheduler.last_epoch = half  # the schedule is a pure function of the iteration
    expected = train["lr"] * (1 - half / train["iterations"]) ** train["poly_power"]
    assert scheduler.get_lr()[0] == pytest.approx(expected, rel=1e-12)
    scheduler.last_epoch = train["iterations"]
    assert scheduler.get_lr()[0] == 0.0


@pytest.mark.parametrize("name", [n for n in PAPER_RECIPES if n.startswith("cityscapes/") and
                                  load_config(n)["model"]["name"].startswith(("decouple_", "fenet"))])
def test_decouple_and_fenet_cityscapes_recipes_sample_half_class_uniformly(name):
    # DecoupleSegNet Table 1a ("uniform sampling trick"), FENet Sec. 4.2; the official scripts'
    # class_uniform_pct = 0.5.
    assert load_config(name)["data"]["class_uniform"] == 0.5


def test_acfnet_recipe_uses_class_balanced_cross_entropy():
    # ACFNet Sec. 3.2: "The class-balanced cross entropy loss is employed for auxiliary supervision,
    # coarse segmentation and fine segmentation."
    model = build_recipe_model("cityscapes/acfnet_r101")
    outputs = {name: torch.randn(2, 19, 8, 8) for name in ("aux", "coarse", "out")}
    labels = torch.randint(0, 19, (2, 32, 32))
    labels[:, :4] = 255
    losses = model.loss(outputs, labels)
    for name, weight in (("aux", 0.4), ("coarse", 0.6), ("out", 0.7)):  # Eq. 4's weights
        expected = weight * cross_entropy(outputs[name], labels, class_balanced=True)
        torch.testing.assert_close(losses[name], expected)
        assert not torch.allclose(losses[name], weight * cross_entropy(outputs[name], labels))


@pytest.mark.parametrize("name", [n for n in PAPER_RECIPES if load_config(n)["model"]["name"] == "fenet"])
def test_fenet_recipes_dilate_the_last_two_stages_at_stride_32(name):
    # Sec. 4.2: "modify the last two stages with dilated convolution but keep the strides unchanged";
    # the official code: dilation 2 in layer3, 4 in layer4.
    model = build_recipe_model(name)
    assert model.backbone.strides == (4, 8, 16, 32)
    assert model.backbone.layer3[-1].conv2.dilation == (2, 2) and model.backbone.layer4[-1].conv2.dilation == (4, 4)
