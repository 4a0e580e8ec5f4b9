"""Model registry: ``register_model(name, ...)`` on a builder, ``build_model(name, ...)``, ``list_models()``,
``model_info(name)`` (the metadata the contract tests and the model benchmarks read)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides its builder.

    Attributes:
        name: the registered name.
        builder: ``builder(num_classes, backbone, **options) -> nn.Module``.
        paper: the paper the model implements ("Author et al., Title, Venue Year").
        baseline: True for a baseline the paper models extend, False for a paper model.
        fused_ops: the ``torch.ops.fastseg`` ops a training step must call (forward and backward).
        bench_crop: the paper's Cityscapes training crop (pixels), the size bench/bench_models.py
            runs it at on a GPU; None: not benchmarked.
        test_options: build options of a tiny instance that trains in seconds on a CPU (the contract
            tests of tests/models/test_paper_models.py build every registered model with them).
    """

    name: str
    builder: ModelBuilder
    paper: str
    baseline: bool
    fused_ops: frozenset[str]
    bench_crop: int | None
    test_options: Mapping[str, Any]


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str = "",
    test_options: Mapping[str, Any] | None = None,
    baseline: bool = False,
    fused_ops: Iterable[str] = (),
    bench_crop: int | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(num_classes, backbone, **options) -> nn.Module`` under ``name``
    with its metadata (see :class:`ModelInfo`); tests/models/test_paper_models.py fails for a model
    registered without ``paper`` or ``test_options``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelInfo(
            name, builder, paper, baseline, frozenset(fused_ops), bench_crop, MappingProxyType(dict(test_options or {}))
        )
        return builder

    return decorator


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name]


def build_model(name: str, num_classes: int, backbone: str = "resnet50", **options) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes on ``backbone`` (e.g. "resnet101")."""
    return model_info(name).builder(num_classes=num_classes, backbone=backbone, **options)


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)
