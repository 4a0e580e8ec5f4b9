"""Run configuration: YAML recipes with ``_base_`` inheritance, ``key=value`` overrides, saving.

A config is a plain nested dict. A recipe file may name ``_base_: <file or list of files>``
(relative to itself, or a packaged recipe name such as ``cityscapes/csfrnet_deeplabv3plus_r101``); the bases are
merged first, in order, then the file's own keys on top (dicts merge recursively, everything else is
replaced). Packaged recipes live in ``fastseg/configs/`` and are found by name without the ``.yaml``.

Overrides are ``dotted.key=value`` strings whose value is parsed as YAML, e.g.
``train.lr=0.02``, ``model.options.channels=64``, ``evaluate.scales=[0.75,1.0,1.25]``. YAML here is
YAML 1.1 with YAML 1.2's floats: ``1e-3`` is a number (plain YAML 1.1 reads it as a string).

:func:`validate_config` checks the types of the known keys once the overrides are applied, so that a
value of the wrong type is an error naming the key, the value and the type wanted.
"""
from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "default"


class ConfigError(ValueError):
    """A config that cannot be used: a key, value or file the message names."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``1e-3``, ``5E4``) as floats."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str) -> Any:
    """``text`` parsed with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def packaged_configs() -> list[str]:
    """Names of the recipes shipped in the package (``default``, ``cityscapes/csfrnet_deeplabv3plus_r101``, ...)."""
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
        f"config {str(name_or_path)!r} is neither a file nor a packaged recipe; packaged: "
        f"{', '.join(name for name in packaged_configs() if not name.startswith('_base_/'))}"
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
        raise ConfigError(f"config inheritance cycle: {' -> '.join(map(str, (*_seen, path)))}")
    try:
        own = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(own, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level, got {type(own).__name__}")
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
            raise ConfigError(f"override {override!r} is not of the form dotted.key=value")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is a {type(child).__name__}, not a mapping")
            node = child
        try:
            node[leaf] = parse_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({' '.join(str(error).split())})") from error
    return result


class Kind:
    """A type a config value must have: ``check(value)`` says whether it does, ``name`` says it in words."""

    def __init__(self, name: str, check: Callable[[Any], bool]) -> None:
        self.name, self.check = name, check


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _choice(*choices: Any) -> Kind:
    shown = [str(c).lower() if isinstance(c, bool) else repr(c) for c in choices]
    return Kind(f"one of {', '.join(shown)}", lambda value: any(type(value) is type(c) and value == c for c in choices))


def _optional(kind: Kind) -> Kind:
    return Kind(f"{kind.name} or null", lambda value: value is None or kind.check(value))


INT = Kind("an integer", _is_int)
COUNT = Kind("an integer >= 0", lambda value: _is_int(value) and value >= 0)
POSITIVE = Kind("an integer >= 1", lambda value: _is_int(value) and value >= 1)
NUMBER = Kind("a number", _is_number)
BOOL = Kind("true or false", lambda value: isinstance(value, bool))
TEXT = Kind("a string", lambda value: isinstance(value, str))
MAPPING = Kind("a mapping", lambda value: isinstance(value, Mapping))
PAIR = Kind("a list of two integers >= 1", lambda value: isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value))
NUMBERS = Kind("a non-empty list of positive numbers", lambda value: isinstance(value, list) and bool(value) and all(_is_number(v) and v > 0 for v in value))

# The types of the keys every part of fastseg reads; other keys (model options, dataset arguments)
# are checked by what they are passed to.
SCHEMA: dict[str, Kind] = {
    "model": MAPPING, "model.name": TEXT, "model.backbone": TEXT, "model.options": _optional(MAPPING),
    "data": MAPPING, "data.dataset": TEXT, "data.root": _optional(TEXT), "data.num_classes": POSITIVE,
    "data.ignore_index": INT, "data.train": _optional(MAPPING), "data.val": _optional(MAPPING),
    "data.augment": _optional(MAPPING), "data.normalize": _optional(MAPPING),
    "evaluate": _optional(MAPPING), "evaluate.mode": _choice("whole", "slide"), "evaluate.crop_size": _optional(PAIR),
    "evaluate.stride": _optional(PAIR), "evaluate.scales": NUMBERS, "evaluate.flip": BOOL, "evaluate.boundary": BOOL,
    "train": _optional(MAPPING), "train.iterations": POSITIVE, "train.batch_size": POSITIVE, "train.lr": NUMBER,
    "train.min_lr": NUMBER, "train.momentum": NUMBER, "train.weight_decay": NUMBER, "train.poly_power": NUMBER,
    "train.warmup": COUNT, "train.warmup_ratio": NUMBER, "train.workers": COUNT, "train.eval_batch_size": POSITIVE,
    "train.eval_interval": COUNT, "train.checkpoint_interval": COUNT, "train.log_interval": POSITIVE,
    "train.amp": _choice("none", "bf16", "fp16"), "train.compile": _choice("auto", True, False),
    "train.sync_bn": BOOL, "train.seed": INT, "train.output_dir": _optional(TEXT), "train.skip_bad": BOOL,
    "train.max_bad_steps": POSITIVE, "train.num_predictions": COUNT, "train.tensorboard": BOOL,
}  # fmt: skip
REQUIRED = ("model", "model.name", "data", "data.dataset", "data.num_classes")


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the key, the value and the type wanted for the first value of
    :data:`SCHEMA` that has the wrong type, or naming a :data:`REQUIRED` key that is absent (other
    absent keys are fine: their defaults apply)."""
    for key, kind in SCHEMA.items():
        node: Any = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or leaf not in node:
            if key in REQUIRED:
                raise ConfigError(f"the config has no {key} ({kind.name} is wanted)")
            continue
        value = node[leaf]
        if not kind.check(value):
            shown = "null" if value is None else repr(value)
            raise ConfigError(f"{key} = {shown} ({type(value).__name__}): {kind.name} is wanted")


def save_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (keys in their given order)."""
    with open(path, "w") as f:
        yaml.safe_dump(dict(config), f, sort_keys=False)
