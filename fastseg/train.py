"""``python -m fastseg.train``: train a segmentation model from a YAML recipe.

With no arguments it trains the ``default`` recipe (a small DeepLabv3+ on ResNet-18 on the built-in
synthetic street scenes, 5-11 minutes on a quiet 2-core CPU), evaluates it, and writes a checkpoint and
prediction images.

    python -m fastseg.train                                      # the default run
    python -m fastseg.train --config cityscapes/acfnet_r101 --set data.root=/data/cityscapes
    python -m fastseg.train --set train.iterations=200 train.lr=0.02 model.backbone=resnet34
    python -m fastseg.train --resume runs/default-20261121-101500/checkpoint_latest.pth
    torchrun --nproc-per-node 4 -m fastseg.train --config cityscapes/fenet_r18   # DDP, one GPU per rank

``--set`` takes ``dotted.key=value`` overrides (values parsed as YAML; ``1e-3`` is a number). The
resolved config, with the global batch and world size, is saved as ``config.yaml`` in the run's output
directory. Mistakes (a missing recipe, a bad override, a value of the wrong type) are one line on stderr
and exit status 2; ``--debug`` shows their traceback.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any

from fastseg.engine import cli
from fastseg.engine.checkpoint import LATEST_NAME
from fastseg.engine.config import DEFAULT_CONFIG, apply_overrides, load_config, validate_config
from fastseg.engine.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedContext,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from fastseg.engine.trainer import NonFiniteLossError, Trainer, train_options

PROG = "python -m fastseg.train"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(PROG, __doc__)
    parser.add_argument("--config", default=None, help=f"recipe file or packaged name (default: {DEFAULT_CONFIG})")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue a run from its checkpoint (its config is used, then --set on top), "
                             "or a run directory (its checkpoint_latest.pth)")  # fmt: skip
    parser.add_argument("--output-dir", default=None, help="run directory (default: train.output_dir, else "
                        "runs/<config name>-<timestamp>; a resumed run keeps its directory)")  # fmt: skip
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="torch.compile the model (default: on for CUDA)")  # fmt: skip
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="mixed precision (GPU)")
    parser.add_argument("--skip-bad", action="store_true", default=None,
                        help="skip (and count) missing or corrupt samples instead of failing")  # fmt: skip
    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a collective waits for the other ranks before failing")  # fmt: skip
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None, Path | None]:
    """(config, output dir or None for the default, checkpoint to resume or None) from the arguments."""
    resume = None
    if args.resume is not None:
        resume = Path(args.resume)
        if resume.is_dir():
            resume = resume / LATEST_NAME
        config = cli.read_checkpoint(str(resume))["config"]
        config.pop("run", None)
    else:
        config = load_config(args.config or DEFAULT_CONFIG)
    overrides = list(args.overrides)
    for option, key in (("compile", "train.compile"), ("amp", "train.amp"), ("skip_bad", "train.skip_bad")):
        value = getattr(args, option)
        if value is not None:
            overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    config = apply_overrides(config, overrides)
    validate_config(config)
    output_dir = args.output_dir or (resume.parent if resume is not None else None)
    output_dir = output_dir or (config.get("train") or {}).get("output_dir")
    return config, Path(output_dir) if output_dir else None, resume


def config_name(name_or_path: str) -> str:
    """``cityscapes_acfnet_r101`` for the packaged ``cityscapes/acfnet_r101``, the file stem for a path."""
    return Path(name_or_path).stem if os.path.isfile(name_or_path) else name_or_path.replace("/", "_")


def default_output_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``."""
    return Path("runs") / f"{name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run(config: dict[str, Any], output_dir: Path, context: DistributedContext, resume: Path | None = None) -> dict:
    """Train ``config`` into ``output_dir`` on this process's share; returns the final metrics."""
    with cli.config_errors():
        trainer = Trainer(config, output_dir, context, resume=resume)
    metrics = trainer.train()
    trainer.close()
    if context.is_main:
        trainer.write_predictions()
        print(f"run directory: {output_dir}", flush=True)
    return metrics


def train(args: argparse.Namespace) -> None:
    """The run the arguments describe."""
    config, output_dir, resume = resolve_run(args)
    context = init_distributed(args.device, timeout_s=args.dist_timeout)
    if output_dir is None:  # one timestamp for all ranks: rank 0's
        output_dir = gather_objects(default_output_dir(config_name(args.config or DEFAULT_CONFIG)))[0]
    with cli.config_errors():
        options = train_options(config)
    threads = cli.set_threads(args.threads)
    if context.is_main:
        model, data = config["model"], config["data"]
        print(f"training {model['name']} ({model.get('backbone', 'resnet50')}) on {data['dataset']} for "
              f"{options['iterations']} iterations of batch {options['batch_size']} on {context.device} "
              f"({threads} CPU thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
              f"{options['workers']} loader worker(s)); run directory {output_dir}",
              flush=True)  # fmt: skip
    try:
        run(config, output_dir, context, resume)
    except NonFiniteLossError as error:  # the run's outcome, not a bug: the message says what to change
        raise cli.UsageError(str(error)) from error
    # Not in a `finally`: a rank that raised exits at once, and the others fail in their next collective
    # (after at most --dist-timeout seconds) rather than waiting in a shutdown handshake.
    shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run_main(PROG, args, train)


if __name__ == "__main__":
    sys.exit(main())
