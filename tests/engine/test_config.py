"""Recipes: _base_ inheritance, overrides, round trip through save, the builders."""
from __future__ import annotations

import pytest
import torch

from fastseg.engine.builders import build_dataset_from_config, build_model_from_config
from fastseg.engine.config import (
    ConfigError,
    apply_overrides,
    load_config,
    merge,
    packaged_configs,
    save_config,
    validate_config,
)


def test_base_inheritance_and_merge(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {x: 1, y: [1, 2]}\nb: 2\n")
    (tmp_path / "mid.yaml").write_text("_base_: base.yaml\na: {y: [3]}\nc: 3\n")
    (tmp_path / "top.yaml").write_text("_base_: [mid.yaml]\na: {z: 4}\nb: null\n")
    assert load_config(tmp_path / "top.yaml") == {"a": {"x": 1, "y": [3], "z": 4}, "b": None, "c": 3}
    base = {"a": {"x": 1}}
    merge(base, {"a": {"x": 2}})
    assert base == {"a": {"x": 1}}, "merge must not modify its inputs"


def test_inheritance_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="nope.*packaged: .*default"):
        load_config("nope")


def test_overrides_parse_yaml_values_and_create_keys():
    config = {"train": {"lr": 0.01, "amp": None}, "model": {"name": "fcn"}}
    result = apply_overrides(config, ["train.lr=0.02", "train.amp=bf16", "model.options.channels=64",
                                      "evaluate.scales=[0.75, 1.0]", "train.compile=false"])
    assert result == {
        "train": {"lr": 0.02, "amp": "bf16", "compile": False},
        "model": {"name": "fcn", "options": {"channels": 64}},
        "evaluate": {"scales": [0.75, 1.0]},
    }
    assert config["train"]["lr"] == 0.01
    with pytest.raises(ValueError, match="dotted.key=value"):
        apply_overrides(config, ["train.lr"])
    with pytest.raises(ValueError, match="'name' is a str"):
        apply_overrides(config, ["model.name.x=1"])


def test_save_round_trip(tmp_path):
    config = apply_overrides(load_config(), ["train.lr=0.5"])
    save_config(config, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == config


def test_packaged_default_builds_model_and_datasets():
    assert "default" in packaged_configs()
    config = apply_overrides(load_config(), ["data.train.length=3", "data.val.length=2"])
    model = build_model_from_config(config)
    assert model.num_classes == config["data"]["num_classes"]
    train, val = build_dataset_from_config(config, "train"), build_dataset_from_config(config, "val")
    assert (len(train), len(val)) == (3, 2)
    image, label = train[0]
    crop = config["data"]["augment"]["crop"]
    assert image.shape == (3, *crop) and label.shape == tuple(crop) and image.dtype == torch.float32
    image, label = val[0]
    assert image.shape[-2:] == label.shape == tuple(config["data"]["val"]["size"])
    assert abs(image.mean().item()) < 3, "normalised"
    with pytest.raises(ValueError, match="no 'test' split"):
        build_dataset_from_config(config, "test")


def test_exponent_floats_parse_as_numbers_in_overrides_and_files(tmp_path):
    result = apply_overrides({}, ["a=1e-3", "b=-2.5E+4", "c=1.0e-3", "d=[1e2, 3]", "e=12", "f=1e3x", "g='1e-3'"])
    assert result == {"a": 1e-3, "b": -25000.0, "c": 1e-3, "d": [100.0, 3], "e": 12, "f": "1e3x", "g": "1e-3"}
    assert type(result["a"]) is float and type(result["e"]) is int
    (tmp_path / "r.yaml").write_text("train: {lr: 5e-4}\n")
    assert load_config(tmp_path / "r.yaml")["train"]["lr"] == 5e-4


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=abc", "train.batch_size = 'abc' (str): an integer >= 1 is wanted"),
    ("train.batch_size=2.5", "train.batch_size = 2.5 (float): an integer >= 1 is wanted"),
    ("train.lr=abc", "train.lr = 'abc' (str): a number is wanted"),
    ("train.lr=.inf", "train.lr = inf (float): a number is wanted"),
    ("train.sync_bn=1", "train.sync_bn = 1 (int): true or false is wanted"),
    ("train.compile=yes-please", "train.compile = 'yes-please' (str): one of 'auto', true, false is wanted"),
    ("evaluate.crop_size=[0, 3]", "evaluate.crop_size = [0, 3] (list): a list of two integers >= 1 or null is wanted"),
    ("data.root=3", "data.root = 3 (int): a string or null is wanted"),
    ("model=resnet", "model = 'resnet' (str): a mapping is wanted"),
])  # fmt: skip
def test_validate_names_key_value_and_type_wanted(override, message):
    config = apply_overrides(load_config(), [override])
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == message


def test_validate_accepts_every_packaged_recipe_and_wants_the_required_keys():
    for name in packaged_configs():
        if not name.startswith("_base_/"):
            validate_config(load_config(name))
    validate_config(apply_overrides(load_config(), ["train.lr=1e-3", "train.compile=true", "data.root=/data"]))
    config = load_config()
    del config["data"]["num_classes"]
    with pytest.raises(ConfigError, match="no data.num_classes"):
        validate_config(config)
