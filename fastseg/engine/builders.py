"""Objects from a run config: the model, the joint transforms and the datasets of each split.

The config sections these read (see ``fastseg/configs/default.yaml`` for a complete example)::

    model:  {name, backbone, options: {...build_model options}}
    data:   {dataset, root, num_classes, ignore_index,
             train: {split, ...dataset kwargs}, val: {split, ...dataset kwargs},
             augment: {scale, base_size, crop, cat_max_ratio, flip, color_jitter, blur},
             normalize: {mean, std}}
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fastseg.data import build_dataset, transforms
from fastseg.models import build_model


def build_model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """``build_model(model.name, data.num_classes, model.backbone, ignore_index=data.ignore_index, **model.options)``."""
    model, data = config["model"], config["data"]
    options = {"ignore_index": data.get("ignore_index", 255), **(model.get("options") or {})}
    return build_model(model["name"], data["num_classes"], backbone=model.get("backbone", "resnet50"), **options)


def build_transforms(data: Mapping[str, Any], train: bool) -> transforms.Compose:
    """Training: random scale, crop (with cat_max_ratio) padded to the crop size, flip, optional colour
    jitter and blur, normalisation. Evaluation: normalisation only (images keep their size)."""
    ignore_index = data.get("ignore_index", 255)
    steps = []
    augment = data.get("augment") or {}
    if train:
        if augment.get("scale"):
            base_size = augment.get("base_size")
            steps.append(transforms.RandomScale(tuple(augment["scale"]), tuple(base_size) if base_size else None))
        if augment.get("crop"):
            crop = tuple(augment["crop"])
            steps.append(transforms.RandomCrop(crop, augment.get("cat_max_ratio", 1.0), ignore_index))
            steps.append(transforms.Pad(crop, ignore_index=ignore_index))
        if augment.get("flip"):
            steps.append(transforms.RandomHorizontalFlip(augment["flip"]))
        if augment.get("color_jitter"):
            steps.append(transforms.ColorJitter(**augment["color_jitter"]))
        if augment.get("blur"):
            blur = augment["blur"]
            steps.append(transforms.GaussianBlur(tuple(blur.get("sigma", (0.1, 2.0))), blur.get("p", 0.5)))
    normalize = data.get("normalize") or {}
    steps.append(transforms.Normalize(**normalize))
    return transforms.Compose(steps)


def build_dataset_from_config(config: Mapping[str, Any], split: str, augment: bool | None = None) -> Dataset:
    """The dataset of ``split`` ("train" or "val": the keys of the data section) with its transforms
    (the training augmentation when ``augment``, by default for "train")."""
    data = config["data"]
    if split not in data:
        raise ValueError(f"the config's data section has no {split!r} split; it has {sorted(data)}")
    options = dict(data[split])
    dataset_split = options.pop("split", split)
    return build_dataset(
        data["dataset"], data.get("root"), split=dataset_split,
        transforms=build_transforms(data, train=split == "train" if augment is None else augment), **options,
    )  # fmt: skip
