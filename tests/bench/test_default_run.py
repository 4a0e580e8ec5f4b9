"""bench/default_run.py: the README's default-run figures are the rendering of the committed result file,
and the summary of a log reads speed and every evaluation's per-class IoU from it."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import default_run  # noqa: E402


def test_readme_block_is_the_rendering_of_the_committed_result_file():
    result = json.loads((REPO / default_run.DEFAULT_OUTPUT).read_text())
    block = default_run.render(result, default_run.DEFAULT_OUTPUT)
    assert block in (REPO / "README.md").read_text()
    final = result["evaluations"][-1]
    assert f"**val mIoU {100 * final['mIoU']:.1f}%**" in block and f"after {final['iter']} iterations" in block


def test_summary_of_a_log_and_its_rendering():
    rng = random.Random()
    names = ["road", "traffic sign", "pole"]
    records, now = [], 1000.0
    evals = {}
    for iteration in range(1, 41):
        now += 0.5
        if iteration % 10 == 0:
            records.append({"kind": "train", "iter": iteration, "time": now, "loss": rng.random()})
        if iteration in (20, 40):
            seconds = rng.uniform(1, 3)
            now += seconds
            ious = [rng.random(), rng.random(), float("nan")]
            evals[iteration] = ious
            records.append({"kind": "val", "iter": iteration, "time": now, "mIoU": sum(ious[:2]) / 2, "aAcc": rng.random(),
                            "mAcc": rng.random(), "seconds": seconds, **{f"IoU/{n}": v for n, v in zip(names, ious)}})  # fmt: skip
    summary = default_run.summarize_log(records)
    assert summary["train_it_per_s"] == pytest.approx(30 / 15.0)  # iterations 10..40 at 0.5 s each, evals excluded
    assert [e["iter"] for e in summary["evaluations"]] == [20, 40]
    assert summary["evaluations"][1]["IoU"] == {"road": evals[40][0], "traffic sign": evals[40][1], "pole": None}
    result = {"command": "python -m fastseg.train", "date": "2026-12-01", "commit": "abc1234", "workers": 2,
              "machine": {"cpu": "Some CPU", "cores": 2, "load_average_before": 0.1, "load_average_after": 0.2,
                          "torch": "2.13.0"},
              "wall_s": 123.4, "cpu_s": 200.0, "max_rss_gb": 0.75, **summary}  # fmt: skip
    block = default_run.render(result, "x.json")
    assert f"road {100 * evals[40][0]:.1f}, traffic sign {100 * evals[40][1]:.1f}, pole -" in block
    assert f"at 20 iterations {100 * (evals[20][0] + evals[20][1]) / 2:.1f}%" in block
    assert "on 2 cores of Some CPU (load average 0.1 before, 0.2 after" in block and "2.00 it/s" in block
    text = f"intro\n{default_run.BEGIN.format(file='old.json')}\nold figures\n{default_run.END}\noutro\n"
    assert default_run.replace_block(text, block) == f"intro\n{block}\noutro\n"
