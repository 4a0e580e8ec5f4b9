"""What the three command lines (``fastseg.train``, ``fastseg.evaluate``, ``fastseg.predict``) share:
the argument parser (``--set`` overrides, ``--debug``, ``--threads``), the CPU threads, how errors
reach the user, and (evaluate, predict) the checkpoint/inference arguments and the run they name.

A user mistake (a missing file, a bad override, a config value of the wrong type, a file that is not a
checkpoint, an unreadable image) is one line on stderr, ``<prog>: error: <message>``, and exit status 2.
Anything else is a bug and keeps its traceback; ``--debug`` shows the traceback of user mistakes too.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
from torch import nn

from fastseg.data import BadSampleError
from fastseg.engine.builders import build_model_from_config
from fastseg.engine.checkpoint import load_checkpoint
from fastseg.engine.config import ConfigError, apply_overrides, load_config, validate_config

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """A mistake of the user's (arguments, files, config): reported in one line, exit status 2."""


# Exceptions that always mean the user's input is wrong, wherever they are raised.
USER_ERRORS = (UsageError, ConfigError, FileNotFoundError, IsADirectoryError, BadSampleError)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(prog: str, description: str) -> Parser:
    """A parser with ``--set KEY=VALUE ...`` (into ``args.overrides``), ``--debug`` and ``--threads``."""
    parser = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        type=override_argument, help="config overrides, values parsed as YAML, e.g. "
                        "--set train.lr=1e-3 evaluate.scales=[0.75,1.0] (repeatable)")  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="intra-op CPU threads of the main process (default: OMP_NUM_THREADS if set, else the "
                        "usable cores divided among the ranks of this machine)")  # fmt: skip
    return parser


def default_threads() -> int:
    """Intra-op threads for the main process: the cores this process may use (its CPU affinity), shared
    by the ``LOCAL_WORLD_SIZE`` ranks of a machine, at least 1.

    DataLoader workers compute on one thread each (PyTorch sets 1 in workers). The threads do not spin
    while they wait: ``python -m fastseg.*`` sets ``OMP_WAIT_POLICY=PASSIVE`` (see ``fastseg/__init__.py``)."""
    cores = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores)


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested``, else keep those of a set ``OMP_NUM_THREADS``, else
    :func:`default_threads`; returns the number."""
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = requested if requested is not None else default_threads()
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def override_argument(text: str) -> str:
    """``text`` if it has the form ``dotted.key=value`` (checked when the arguments are parsed)."""
    key, sep, _ = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form dotted.key=value")
    return text


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Turn the ``ValueError``/``TypeError``/``KeyError`` of building things from a config (a model
    option that does not exist, a missing section, an unknown name) into a :class:`UsageError`.

    Wrap only the building, not the work itself: there these exceptions are bugs."""
    try:
        yield
    except KeyError as error:
        raise UsageError(f"the config has no {error} entry it needs") from error
    except (ValueError, TypeError) as error:
        raise UsageError(f"invalid config: {error}") from error


def read_checkpoint(path: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`~fastseg.engine.checkpoint.load_checkpoint`, a file that is no checkpoint being a :class:`UsageError`."""
    try:
        return load_checkpoint(path, **kwargs)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except RuntimeError as error:
        raise UsageError(str(error).splitlines()[0]) from error


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: an OS error's reason and file; of an error re-raised from a
    DataLoader worker (whose message carries the worker's traceback), the original message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].partition(": ")[2]
    return " ".join(text.split()) or type(error).__name__


def run_main(prog: str, args: argparse.Namespace, main: Callable[[argparse.Namespace], Any]) -> int:
    """``main(args)``; 0 when it returns, 2 with one line on stderr for a user mistake (re-raised with
    ``--debug``)."""
    try:
        main(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, config and device arguments shared by evaluate and predict."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by fastseg.train")
    parser.add_argument("--config", help="a recipe name or YAML file to use instead of the checkpoint's config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override the config's ``evaluate`` section (see ``fastseg.engine.inference``)."""
    parser.add_argument("--mode", choices=("whole", "slide"), help="whole image or sliding window")
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride")
    parser.add_argument("--scales", type=float, nargs="+", help="test scales, e.g. 0.75 1.0 1.25")
    parser.add_argument("--flip", action="store_true", default=None, help="also average the mirrored image")


def load_run(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The model (weights from ``--checkpoint``, on ``--device``, in eval mode) and the resolved config
    (checkpoint's or ``--config``, then ``--set``, then the inference flags into ``evaluate``)."""
    checkpoint = read_checkpoint(args.checkpoint)
    config = load_config(args.config) if args.config else checkpoint["config"]
    config = apply_overrides(config, args.overrides)
    section = config.setdefault("evaluate", {})
    for key in ("mode", "crop_size", "stride", "scales", "flip"):
        if getattr(args, key, None) is not None:
            value = getattr(args, key)
            section[key] = list(value) if isinstance(value, (list, tuple)) else value
    validate_config(config)
    with config_errors():
        # The checkpoint holds every weight: do not load the backbone's ImageNet weights again.
        model_options = config["model"].get("options") or {}
        model = build_model_from_config({**config, "model": {**config["model"], "options": {**model_options, "pretrained": None}}})
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise UsageError(f"the weights of {args.checkpoint} do not fit the config's model: {error}") from error
    return model.to(args.device).eval(), config
