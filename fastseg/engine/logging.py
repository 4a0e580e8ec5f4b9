"""Training logs: a progress line (it/s, ETA, loss, LR), a JSON-lines file and TensorBoard scalars.

Only the main rank writes. Values arrive as Python floats (the trainer calls ``.item()`` once per log
interval), so nothing here holds tensors. TensorBoard is optional: without the ``tensorboard`` package
(``pip install fastseg[train]``) one notice is printed and the JSON-lines log still has every scalar.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressBar:
    """One status line per update: ``iter 120/2000 6% | 1.9 it/s | ETA 0:16:29 | loss 0.812 | lr 9.4e-03``.

    On a terminal the line is redrawn in place; otherwise (files, CI) each update is a new line.
    Speed is measured over the iterations since the previous update (resume-safe: it starts at ``start``).
    """

    def __init__(self, total: int, start: int = 0, stream: IO[str] | None = None) -> None:
        self.total, self.stream = total, stream or sys.stderr
        self.in_place = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_iteration, self._last_time = start, time.perf_counter()
        self.rate = float("nan")

    def update(self, iteration: int, scalars: Mapping[str, float]) -> None:
        now = time.perf_counter()
        if iteration > self._last_iteration and now > self._last_time:
            self.rate = (iteration - self._last_iteration) / (now - self._last_time)
        self._last_iteration, self._last_time = iteration, now
        eta = (self.total - iteration) / self.rate if self.rate > 0 else float("nan")
        parts = [f"iter {iteration}/{self.total} {100 * iteration / self.total:3.0f}%", f"{self.rate:.2f} it/s",
                 f"ETA {format_duration(eta)}"]  # fmt: skip
        parts += [f"{key} {value:.4g}" for key, value in scalars.items()]
        line = " | ".join(parts)
        self.stream.write(f"\r{line}\x1b[K" if self.in_place else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.in_place:
            self.stream.write("\n")
            self.stream.flush()


class RunLogger:
    """Scalars of a run to ``<output_dir>/log.jsonl`` (one JSON object per record, appended across resumes)
    and to TensorBoard event files under ``<output_dir>/tensorboard`` when the package is installed."""

    def __init__(self, output_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.output_dir / "log.jsonl"
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("fastseg: the tensorboard package is not installed; logging to log.jsonl only "
                      "(pip install tensorboard to get TensorBoard scalars)", file=sys.stderr)  # fmt: skip
            else:
                self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))

    def log(self, iteration: int, scalars: Mapping[str, Any], kind: str = "train") -> None:
        """One record ``{"kind", "iter", "time", **scalars}``; numeric scalars also go to TensorBoard as
        ``<kind>/<name>``."""
        record = {"kind": kind, "iter": iteration, "time": time.time(), **scalars}
        self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        if self._writer is not None:
            for name, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{kind}/{name}", value, iteration)

    def flush(self) -> None:
        self._jsonl.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()


def read_log(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (those of ``kind`` only, when given)."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def drop_records_after(path: str | os.PathLike, iteration: int) -> None:
    """Remove the records of iterations after ``iteration`` from a ``log.jsonl`` (atomically), so that a
    run resumed from an earlier checkpoint does not log those iterations twice.

    A last record cut mid-line (the disk filled, or the process died, while it was appended) is dropped
    with a notice; an unreadable record anywhere else is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a JSON record ({error})") from error
            print(f"fastseg: dropping the torn last record of {path}: {line[:60]!r}", file=sys.stderr)
            continue
        if record["iter"] <= iteration:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
