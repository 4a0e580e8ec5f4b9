"""Every packaged recipe resolves to a complete, valid run config naming a registered model."""
from __future__ import annotations

import pytest
import torch

from fastseg.data import DATASET_NAMES
from fastseg.data.datasets.registry import FILE_DATASETS
from fastseg.engine.builders import build_transforms
from fastseg.engine.config import load_config, packaged_configs
from fastseg.engine.inference import inference_options
from fastseg.engine.trainer import TRAIN_DEFAULTS, train_options
from fastseg.models import build_model, list_models, model_info

RECIPES = [name for name in packaged_configs() if not name.startswith("_base_/")]
PAPER_MODELS = {name for name in list_models() if not model_info(name).baseline}  # the registry's, not a copy


def test_every_paper_model_has_a_recipe():
    assert len(PAPER_MODELS) >= 9  # ACFNet, FENet, DecoupleSegNet x3, CSFRNet x4
    named = {load_config(name)["model"]["name"] for name in RECIPES}
    assert PAPER_MODELS <= named, sorted(PAPER_MODELS - named)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_complete(name):
    config = load_config(name)
    assert set(config) == {"model", "data", "train", "evaluate"}, sorted(config)
    options = train_options(config)
    assert set(config["train"]) == set(TRAIN_DEFAULTS), "recipes spell out every train option"
    assert options["momentum"] == 0.9 and options["iterations"] > 0 and options["batch_size"] >= 2
    data = config["data"]
    assert data["dataset"] in DATASET_NAMES
    if data["dataset"] in FILE_DATASETS:
        assert data["num_classes"] == len(FILE_DATASETS[data["dataset"]].classes)
    build_transforms(data, train=True)
    inference_options(config["evaluate"])
    assert config["model"]["name"] in list_models()
    # The recipe's model options are ones its builder takes (on the meta device to keep the test cheap).
    with torch.device("meta"):
        build_model(config["model"]["name"], data["num_classes"], backbone=config["model"]["backbone"], **config["model"]["options"])
