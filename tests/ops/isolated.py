"""Run a snippet in a fresh Python process, so that a crash (SIGSEGV, SIGFPE, abort) fails one test
instead of killing the test session."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# What every snippet starts with: torch, fastseg's ops and the raw torch.ops.fastseg namespace.
PRELUDE = "import torch\nfrom fastseg import ops\nimport fastseg.ops.extension\ntorch.manual_seed(0)\n"


def run_isolated(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """The finished process of ``python -c PRELUDE + code`` (stdout and stderr captured as text)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_clean_error(code: str, error: str, match: str) -> None:
    """The snippet raises ``error`` (a name such as "ValueError") whose message contains ``match``, without
    crashing: it is wrapped so that the process prints the outcome and exits 0."""
    wrapped = (
        "try:\n" + textwrap.indent(textwrap.dedent(code), "    ")
        + "\nexcept Exception as e:\n    print('RAISED', type(e).__name__, str(e).splitlines()[0] if str(e) else '')\n"
        + "else:\n    print('NO ERROR')\n"
    )
    result = run_isolated(wrapped)
    assert result.returncode == 0, f"crashed with code {result.returncode}:\n{result.stderr[-2000:]}"
    assert f"RAISED {error}" in result.stdout, result.stdout + result.stderr[-2000:]
    assert match in result.stdout, result.stdout
