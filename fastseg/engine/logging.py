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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressBar:
    """A status line, ``iter 120/2000 6% | 1.9 it/s | ETA 0:16:29 | loss 0.812 | lr 9.4e-03``, drawn at most
    once per ``interval_s`` seconds however often :meth:`update` is called, and always at the first and
    the last update, so that long work shows progress from its start.

    On a terminal the line is redrawn in place every ``interval_s`` (default 0.5 s); otherwise (files,
    CI, pipes) each drawing is a new line, one per ``interval_s`` (default 10 s). Speed is measured over
    the steps since the previous drawing (resume-safe: counting starts at ``start``).

    Args:
        total: steps to the end. start: the step counting starts at (a resumed run's iteration).
        label, unit: ``iter``/``it`` for training, e.g. ``image``/``img`` for evaluation.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        stream: IO[str] | None = None,
        *,
        label: str = "iter",
        unit: str = "it",
        interval_s: float | None = None,
    ) -> None:
        self.total, self.stream, self.label, self.unit = total, stream or sys.stderr, label, unit
        self.in_place = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.in_place else 10.0)
        self._last_step, self._last_time = start, time.perf_counter()
        self._drawn_step: int | None = None
        self._open_line = False
        self.rate = float("nan")

    def update(self, step: int, scalars: Mapping[str, float] | None = None) -> bool:
        """Step ``step`` of ``total`` is done; draws the line (with ``scalars``) if it is due. Returns
        whether it drew."""
        now = time.perf_counter()
        first = self._drawn_step is None
        if not (first or step >= self.total or now - self._last_time >= self.interval_s):
            return False
        if step > self._last_step and now > self._last_time:
            self.rate = (step - self._last_step) / (now - self._last_time)
        self._last_step, self._last_time, self._drawn_step = step, now, step
        eta = (self.total - step) / self.rate if self.rate > 0 else float("nan")
        parts = [f"{self.label} {step}/{self.total} {100 * step / max(self.total, 1):3.0f}%",
                 f"{self.rate:.2f} {self.unit}/s", f"ETA {format_duration(eta)}"]  # fmt: skip
        parts += [f"{key} {value:.4g}" for key, value in (scalars or {}).items()]
        line = " | ".join(parts)
        if self.in_place:
            self.stream.write(f"\r{line}\x1b[K")
            self._open_line = True
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()
        return True

    def end_line(self) -> None:
        """End the line drawn in place, so that what is printed next starts on a line of its own."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def close(self) -> None:
        self.end_line()


def worst_classes(ious: Sequence[float], names: Sequence[str], count: int = 3) -> str:
    """``pole 0.00, traffic sign 0.76, person 53.47``: the ``count`` classes of lowest IoU (fractions,
    shown in %), lowest first; classes whose IoU is NaN (absent from the split) are left out."""
    known = sorted((iou, str(name)) for iou, name in zip(ious, names) if not math.isnan(iou))
    return ", ".join(f"{name} {100 * iou:.2f}" for iou, name in known[:count])


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
