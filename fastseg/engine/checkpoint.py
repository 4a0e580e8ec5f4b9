"""Checkpoints: one ``torch.save``d dict, written atomically.

The dict always holds ``"model"`` (the state dict of the bare model: no DDP ``module.`` or
torch.compile ``_orig_mod.`` prefixes) and ``"config"`` (the resolved run config), so that evaluation
and prediction rebuild the model from the checkpoint alone; training adds its resume state
(optimizer, LR schedule, AMP scaler, iteration, and each rank's RNG states from :func:`rng_state`).
"""
from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LATEST_NAME = "checkpoint_latest.pth"
BEST_NAME = "checkpoint_best.pth"


def bare_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, flushed to disk,
    then renamed over ``path``. An interrupted write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error if it is not one."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise RuntimeError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} is not a fastseg checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [key for key in ("model", "config") if key not in state]
    if missing:
        raise RuntimeError(f"{path} is not a fastseg checkpoint (missing {missing})")
    return state


def rng_state() -> dict[str, Any]:
    """This process's RNG states: Python's ``random``, NumPy's global, torch's CPU and (when CUDA is
    initialised) every CUDA device's."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
