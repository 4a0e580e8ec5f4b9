"""Checkpoints: one ``torch.save``d dict, written atomically.

The dict always holds ``"model"`` (the state dict of the bare model: no DDP ``module.`` or
torch.compile ``_orig_mod.`` prefixes) and ``"config"`` (the resolved run config), so that evaluation
and prediction rebuild the model from the checkpoint alone; training adds its resume state
(optimizer, LR schedule, AMP scaler, iteration, and each rank's RNG states from :func:`rng_state`).

Loading is safe and checked: ``torch.load(weights_only=True)`` (tensors and plain Python values only,
so a crafted file cannot run code), a BLAKE2b digest of every saved value stored under ``"digest"``
and verified (torch.load does not check the zip CRC, so a flipped bit would load silently), and
non-finite model weights refused by name. Every failure is a :class:`CheckpointError` with a
one-line message.
"""
from __future__ import annotations

import hashlib
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
DIGEST_KEY = "digest"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, not fastseg's, corrupt, or with non-finite weights."""


def bare_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _digest_into(hasher, value: Any, path: str) -> None:
    """Feed ``value`` (nested dicts, lists, tuples, tensors, arrays and plain values) with its key path."""
    if isinstance(value, Mapping):
        for key in sorted(value, key=repr):
            _digest_into(hasher, value[key], f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{path}:{type(value).__name__}[{len(value)}]".encode())
        for index, item in enumerate(value):
            _digest_into(hasher, item, f"{path}/{index}")
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"{path}:{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        hasher.update(f"{path}:{value.dtype}{value.shape}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    else:
        hasher.update(f"{path}={value!r}".encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """BLAKE2b hex digest of every value of a checkpoint dict except the digest itself."""
    hasher = hashlib.blake2b(digest_size=32)
    _digest_into(hasher, {key: value for key, value in state.items() if key != DIGEST_KEY}, "")
    return hasher.hexdigest()


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an Inf."""
    return [name for name, value in tensors.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def _temp_prefix(name: str) -> str:
    return f".{name}."


def remove_orphan_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted :func:`save_checkpoint` calls left in ``directory``
    (e.g. after ``kill -9``); returns the paths removed. Call it only while no save is in progress."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for name in (LATEST_NAME, BEST_NAME):
        for tmp in directory.glob(f"{_temp_prefix(name)}*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` and its digest to ``path`` atomically: a temporary file in the same directory,
    flushed to disk, then renamed over ``path``. An interrupted write leaves the previous file intact.

    Raises CheckpointError (writing nothing) when the model weights hold a NaN or an Inf."""
    path = Path(path)
    bad = nonfinite_tensors(state["model"]) if "model" in state else []
    if bad:
        raise CheckpointError(f"not writing {path}: {len(bad)} model tensor(s) hold NaN/Inf, e.g. {bad[:3]}")
    state = {**state, DIGEST_KEY: state_digest(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (tensors and plain values only).

    Raises FileNotFoundError for a missing file and CheckpointError (one line) for a file that is not
    a fastseg checkpoint, does not match its digest, or holds non-finite model weights."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (only tensors and plain values are loaded): "
                              f"{reason}") from error  # fmt: skip
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a fastseg checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [key for key in ("model", "config", DIGEST_KEY) if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a fastseg checkpoint (missing {missing})")
    if state_digest(state) != state[DIGEST_KEY]:
        raise CheckpointError(f"{path} is corrupt: its contents do not match the digest stored when it was written")
    bad = nonfinite_tensors(state["model"])
    if bad:
        raise CheckpointError(f"{path} holds non-finite model weights in {len(bad)} tensor(s): {', '.join(bad[:5])}"
                              + (", ..." if len(bad) > 5 else ""))  # fmt: skip
    return state


def rng_state() -> dict[str, Any]:
    """This process's RNG states: Python's ``random``, NumPy's global, torch's CPU and (when CUDA is
    initialised) every CUDA device's."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        # plain values, not an ndarray: weights_only loading refuses numpy objects
        "numpy": (kind, keys.tolist(), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
