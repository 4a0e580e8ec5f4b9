"""Measure a training run and keep its figures: the README's default-run figures come from the file this writes.

Usage: ``python bench/default_run.py [--output bench/results/default-run.json] [--readme README.md] [-- TRAIN ARGS]``

Runs ``python -m fastseg.train TRAIN ARGS`` (none: the default run) in a fresh run directory, timing it
from the outside (wall time, CPU time and peak memory of the process and its loader workers, the
machine's load average before and after), then reads the run's ``log.jsonl`` (every evaluation's mIoU,
aAcc, mAcc and per-class IoU) and writes one JSON file. ``--readme`` rewrites the README's block between
:data:`BEGIN` and :data:`END` from that file (``--from-file`` re-renders without training);
``tests/bench/test_default_run.py`` checks that the README's block is the rendering of the committed file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = "bench/results/default-run.json"
BEGIN = "<!-- default-run figures: written by `python bench/default_run.py --readme README.md` from {file} -->"
END = "<!-- end of default-run figures -->"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summarize_log(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Training speed and every evaluation from a run's ``log.jsonl`` records.

    ``train_it_per_s``: iterations between the first and the last train record over the time between
    them less the evaluations' seconds. ``evaluations``: per evaluation its iteration, mIoU, aAcc, mAcc
    (fractions) and ``IoU`` {class: fraction or None}."""
    train = [r for r in records if r["kind"] == "train"]
    evaluations = [r for r in records if r["kind"] == "val"]
    span = train[-1]["time"] - train[0]["time"]
    eval_s = sum(r["seconds"] for r in evaluations if train[0]["iter"] <= r["iter"] < train[-1]["iter"])
    steps = train[-1]["iter"] - train[0]["iter"]
    return {
        "train_it_per_s": steps / (span - eval_s) if steps and span > eval_s else None,
        "evaluations": [
            {"iter": r["iter"], "mIoU": r["mIoU"], "aAcc": r["aAcc"], "mAcc": r["mAcc"], "seconds": r["seconds"],
             "IoU": {key[4:]: (None if value != value else value) for key, value in r.items() if key.startswith("IoU/")}}
            for r in evaluations
        ],
    }  # fmt: skip


def measure(train_args: list[str]) -> dict[str, Any]:
    """Run the training and return the result file's content."""
    run_dir = Path(tempfile.mkdtemp(prefix="fastseg-default-run-")) / "run"
    command = [sys.executable, "-m", "fastseg.train", "--output-dir", str(run_dir), *train_args]
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "command": shlex.join(["python", "-m", "fastseg.train", *train_args]),
        "date": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip() or None,
        "machine": {
            "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "load_average_before": round(load_before[0], 2),
            "load_average_after": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        },
        "iterations": config["train"]["iterations"],
        "batch_size": config["train"]["batch_size"],
        "workers": config["train"]["workers"],
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "max_rss_gb": round(usage.ru_maxrss / 2**20, 2),
        **summarize_log(records),
    }  # fmt: skip


def render(result: dict[str, Any], file: str) -> str:
    """The README block: the figures of ``result`` in words, between :data:`BEGIN` and :data:`END`."""
    machine = result["machine"]
    final = result["evaluations"][-1]
    classes = ", ".join(f"{name} {'-' if iou is None else f'{100 * iou:.1f}'}" for name, iou in final["IoU"].items())
    earlier = "; ".join(f"at {e['iter']} iterations {100 * e['mIoU']:.1f}%" for e in result["evaluations"][:-1])
    rate = result["train_it_per_s"]
    lines = [
        BEGIN.format(file=file),
        f"Measured with `{result['command']}` on {machine['cores']} cores of {machine['cpu']} (load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after; torch {machine['torch']}, "
        f"{result['workers']} loader workers), {result['date']}, commit {result['commit']}: **val mIoU "
        f"{100 * final['mIoU']:.1f}%** (aAcc {100 * final['aAcc']:.1f}%, mAcc {100 * final['mAcc']:.1f}%) after "
        f"{final['iter']} iterations in **{result['wall_s']:.0f} s wall** ({result['cpu_s']:.0f} s CPU, "
        f"{'?' if rate is None else f'{rate:.2f}'} it/s training, max RSS {result['max_rss_gb']:.2f} GB); "
        f"IoU per class: {classes}" + (f"; {earlier}." if earlier else "."),
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with its block from the BEGIN line to the END line replaced by ``block``."""
    lines = text.splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if line.startswith(BEGIN.partition("{file}")[0]))
    end = next(i for i, line in enumerate(lines) if line.startswith(END))
    return "".join([*lines[:begin], block + "\n", *lines[end + 1 :]])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the result file (JSON)")
    parser.add_argument("--readme", help="rewrite this README's default-run block from the result file")
    parser.add_argument("--from-file", action="store_true", help="do not train: render the existing result file")
    args = parser.parse_args(own)
    output = REPO / args.output
    if not args.from_file:
        output.write_text(json.dumps(measure(train_args), indent=2) + "\n")
        print(f"wrote {output}")
    if args.readme:
        readme = Path(args.readme)
        block = render(json.loads(output.read_text()), args.output)
        readme.write_text(replace_block(readme.read_text(), block))
        print(f"rewrote the default-run block of {readme}")


if __name__ == "__main__":
    main()
