"""setup.py's answers to the ways a build goes wrong: one line, a non-zero exit, in seconds."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_setup(*, hide_torch=False, **env):
    """Runs `setup.py --name` (no compiling) in a subprocess; returns (exit code, stderr)."""
    prelude = "import sys; sys.modules['torch'] = None; " if hide_torch else ""
    code = prelude + "import runpy, sys; sys.argv = ['setup.py', '--name']; runpy.run_path('setup.py', run_name='__main__')"
    environment = {**os.environ, **env}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stderr


def test_without_pytorch_it_says_how_to_build_against_the_installed_one():
    # pip's isolated build environment has no torch (pyproject's build requirements name none).
    code, stderr = run_setup(hide_torch=True)
    assert code != 0
    assert "fastseg: error: PyTorch is not importable" in stderr
    assert "pip install --no-build-isolation ." in stderr
    assert "Traceback" not in stderr


def test_build_requirements_do_not_pull_pytorch():
    text = (ROOT / "pyproject.toml").read_text()
    requires = next(line for line in text.splitlines() if line.startswith("requires = "))
    assert "torch" not in requires


def test_bad_fastseg_cuda_value_is_one_line():
    code, stderr = run_setup(FASTSEG_CUDA="yes")
    assert code != 0
    assert "FASTSEG_CUDA must be 0 or 1, got 'yes'" in stderr
    assert "Traceback" not in stderr


def test_forced_cuda_without_a_toolkit_names_what_it_tried():
    code, stderr = run_setup(FASTSEG_CUDA="1", CUDA_HOME="/nonexistent/cuda")
    assert code != 0
    assert "Traceback" not in stderr
    if torch.version.cuda is None:
        assert "has no CUDA" in stderr
    else:
        assert "$CUDA_HOME: /nonexistent/cuda" in stderr
