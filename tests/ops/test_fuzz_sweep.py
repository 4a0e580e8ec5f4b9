"""The seeded random bad-input sweep of the raw C++ ops (.ci/fuzz_ops.py; .ci/sanitize runs it under ASAN+UBSan):
no crash, and no result that the reference refuses or computes differently. Each case runs in a worker
subprocess, so a crash fails this test instead of killing the session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastseg.ops import extension

SWEEP = Path(__file__).resolve().parents[2] / ".ci" / "fuzz_ops.py"


@pytest.mark.skipif(not extension.available(), reason=f"fastseg._C: {extension.unavailable_reason()}")
def test_bad_input_sweep_has_no_crash_and_no_silent_result():
    result = subprocess.run([sys.executable, str(SWEEP), "--cases", "120", "--seed", "7"], capture_output=True,
                            text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "crash 0, silent 0" in summary
    error, ok = (int(summary.split(f"{name} ")[1].split(",")[0]) for name in ("error", "ok"))
    assert error > 20 and ok > 20, f"the sweep exercises both refusals and results: {summary}"
