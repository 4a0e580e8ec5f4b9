"""``python -m fastseg.evaluate``: mIoU, per-class IoU/accuracy and boundary F-score of a checkpoint.

    python -m fastseg.evaluate --checkpoint CHECKPOINT.pt [--config NAME_OR_PATH] [--set k=v ...]
        [--split val] [--mode whole|slide] [--crop-size H W] [--stride H W] [--scales 0.75 1.0 ...] [--flip]
        [--boundary] [--skip-bad] [--batch-size N] [--workers N] [--output results.json] [--device cpu|cuda]

The run config comes from the checkpoint (or ``--config``), with ``--set`` overrides on top; the
inference flags override its ``evaluate`` section. Shows progress over the images, prints a table and
writes the numbers as JSON (NaN, for classes absent from the split, written as null), by default next
to the checkpoint as ``<checkpoint stem>_<split>_results.json``. Mistakes are one line on stderr and exit
status 2 (``--debug`` shows their traceback).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fastseg.engine import cli
from fastseg.engine.builders import build_dataset_from_config
from fastseg.engine.evaluator import evaluate, format_table
from fastseg.engine.inference import inference_options
from fastseg.engine.logging import ProgressBar

PROG = "python -m fastseg.evaluate"


def default_output(checkpoint: str | Path, split: str) -> Path:
    """``<checkpoint dir>/<checkpoint stem>_<split>_results.json``: results stay with the run they belong to."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_{split}_results.json")


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, so that the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, config = cli.load_run(args)
    data = config["data"]
    if args.split not in data:
        raise cli.UsageError(f"the config's data section has no {args.split!r} split; it has {sorted(data)}")
    if args.skip_bad and data["dataset"] != "synthetic":
        data.setdefault(args.split, {})["skip_bad"] = True
    with cli.config_errors():
        dataset = build_dataset_from_config(config, args.split)
    # Images of one size batch together; file datasets may mix sizes, so they go one at a time.
    batch_size = args.batch_size or (4 if data["dataset"] == "synthetic" else 1)
    cli.set_threads(args.threads)
    # the dataset's record of skipped samples is shared with the workers, so --skip-bad counts theirs too
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=args.workers,
                        pin_memory=args.device.startswith("cuda"))
    section = config["evaluate"]
    progress = ProgressBar(len(dataset), label="image", unit="img")
    results = evaluate(
        model, loader, num_classes=data["num_classes"], ignore_index=data.get("ignore_index", 255), device=args.device,
        inference=section, boundary=args.boundary, class_names=list(dataset.classes), progress=progress,
    )  # fmt: skip
    progress.close()
    results["num_skipped"] = getattr(dataset, "num_skipped", 0)
    print(format_table(results))
    print(f"{results['num_images']} images of split {args.split!r}, {results['num_skipped']} skipped as unreadable")
    report = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "inference": {**inference_options(section), "boundary": args.boundary or bool(section.get("boundary"))},
        **results,
        "config": config,
    }
    output = Path(args.output) if args.output else default_output(args.checkpoint, args.split)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    print(f"wrote {output}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = cli.make_parser(PROG, __doc__)
    cli.add_run_arguments(parser)
    cli.add_inference_arguments(parser)
    parser.add_argument("--split", default="val", help="a split of the config's data section")
    parser.add_argument("--boundary", action="store_true",
                        help="also the boundary F-score at 0.0005, 0.001875, 0.00375 and 0.005 of the image "
                             "diagonal (2, 5, 9, 12 px at 1024x2048)")
    parser.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images/labels")
    parser.add_argument("--batch-size", type=int, help="default 4 for synthetic data, else 1")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--output", help="where the JSON results go (default: <checkpoint stem>_<split>_results.json "
                        "next to the checkpoint)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_main(PROG, build_parser().parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
