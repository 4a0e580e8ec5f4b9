"""Model registry: ``register_model(name)`` on a builder, ``build_model(name, ...)``, ``list_models()``."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelBuilder = Callable[..., nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(num_classes, backbone, **options) -> nn.Module`` under ``name``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return decorator


def build_model(name: str, num_classes: int, backbone: str = "resnet50", **options) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes on ``backbone`` (e.g. "resnet101")."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, backbone=backbone, **options)


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)
