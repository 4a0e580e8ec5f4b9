"""Run configuration: YAML recipes with ``_base_`` inheritance, ``key=value`` overrides, saving.

A config is a plain nested dict. A recipe file may name ``_base_: <file or list of files>``
(relative to itself, or a packaged recipe name such as ``cityscapes/csfrnet_r50``); the bases are
merged first, in order, then the file's own keys on top (dicts merge recursively, everything else is
replaced). Packaged recipes live in ``fastseg/configs/`` and are found by name without the ``.yaml``.

Overrides are ``dotted.key=value`` strings whose value is parsed as YAML, e.g.
``train.lr=0.02``, ``model.options.channels=64``, ``evaluate.scales=[0.75,1.0,1.25]``.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "default"


def packaged_configs() -> list[str]:
    """Names of the recipes shipped in the package (``default``, ``cityscapes/csfrnet_r50``, ...)."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """A recipe file: an existing path (absolute, or relative to ``relative_to`` / the working
    directory), else a packaged recipe name."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_path)
    candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} is neither a file nor a packaged recipe; packaged: {', '.join(packaged_configs())}"
    )


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, recursing into dicts present in both; inputs are not modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(name_or_path: str | os.PathLike = DEFAULT_CONFIG, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a recipe (file path or packaged name) with its ``_base_`` chain resolved."""
    path = resolve_config_path(name_or_path, _seen[-1].parent if _seen else None)
    if path in _seen:
        raise ValueError(f"config inheritance cycle: {' -> '.join(map(str, (*_seen, path)))}")
    with open(path) as f:
        own = yaml.safe_load(f) or {}
    if not isinstance(own, dict):
        raise ValueError(f"config {path} must hold a mapping at the top level, got {type(own).__name__}")
    bases = own.pop("_base_", [])
    config: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        config = merge(config, load_config(base, (*_seen, path)))
    return merge(config, own)


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``config`` with each ``dotted.key=value`` applied (value parsed as YAML; missing dicts created)."""
    result = copy.deepcopy(dict(config))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not of the form dotted.key=value")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {override!r}: {part!r} is a {type(child).__name__}, not a mapping")
            node = child
        node[leaf] = yaml.safe_load(raw)
    return result


def save_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (keys in their given order)."""
    with open(path, "w") as f:
        yaml.safe_dump(dict(config), f, sort_keys=False)
