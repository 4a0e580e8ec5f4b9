"""Load ImageNet ResNet checkpoints (torchvision, timm, mmsegmentation ResNetV1c) into :class:`ResNet`.

Key mapping, in order:
  1. a checkpoint dict wrapping the weights under ``state_dict`` or ``model`` is unwrapped;
  2. the prefixes ``module.`` (DataParallel/DDP) and ``backbone.`` (mmsegmentation) are stripped;
  3. classifier keys (``fc.*``, timm's ``head.*``) are dropped;
  4. mmsegmentation's ResNetV1c stem ``stem.{0,1,3,4,6,7}`` is renamed to timm's deep-stem names
     ``conv1.{0,1,3,4,6}`` and ``bn1``.
torchvision and timm plain ResNets already use this module's names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), and timm's deep stem too (``conv1.0/1/3/4/6``).
What then does not fit is reported, never silently loaded: keys of the model the checkpoint lacks
(``num_batches_tracked`` buffers excepted), checkpoint keys the model lacks, and shape mismatches.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "backbone.")
_CLASSIFIER_PREFIXES = ("fc.", "head.")
_MMSEG_STEM = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
               "stem.6.": "conv1.6.", "stem.7.": "bn1."}
_URL = re.compile(r"^(https?|file)://")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; ``str(report)`` is a readable summary."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model key was loaded and every checkpoint key was used (classifier aside)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; dropped {len(self.dropped)} classifier keys"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                lines.append(f"{title} ({len(keys)}): {', '.join(keys)}")
        return "\n".join(lines)


def _read(source: str | os.PathLike | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if isinstance(source, Mapping):
        state = source
    elif _URL.match(str(source)):
        state = torch.hub.load_state_dict_from_url(str(source), map_location="cpu", weights_only=True)
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    return state


def _rename(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    for old, new in _MMSEG_STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor]) -> LoadReport:
    """Load a ResNet checkpoint into ``model`` (a :class:`ResNet`, or anything with a ``backbone`` one).

    Args:
        model: the backbone, or a segmentor whose ``backbone`` attribute is the backbone.
        source: a state dict, a file path, or an http(s)/file URL (downloaded to the torch hub cache).

    Returns the :class:`LoadReport`, also logged (warning level when something did not fit).
    """
    target = getattr(model, "backbone", model)
    own = target.state_dict()
    report = LoadReport()
    mapped: dict[str, Tensor] = {}
    for key, value in _read(source).items():
        name = _rename(key)
        if name.startswith(_CLASSIFIER_PREFIXES):
            report.dropped.append(key)
        elif name not in own:
            report.unexpected.append(key)
        elif own[name].shape != value.shape:
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[name].shape)}")
        else:
            mapped[name] = value
    target.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    report.missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    logger.log(logging.INFO if report.complete else logging.WARNING, "load_pretrained: %s", report)
    return report
