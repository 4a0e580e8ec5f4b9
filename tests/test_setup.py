"""setup.py's answers to the ways a build goes wrong: one line, a non-zero exit, in seconds."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_setup(*arguments, hide_torch=False, **env):
    """Runs `setup.py --name` (or `setup.py *arguments`) in a subprocess without a terminal, so that
    setup.py's notices go to stderr; returns (exit code, stderr)."""
    prelude = "import sys; sys.modules['torch'] = None; " if hide_torch else ""
    argv = ["setup.py", *(arguments or ["--name"])]
    code = prelude + f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path('setup.py', run_name='__main__')"
    environment = {**os.environ, **env}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=120, start_new_session=True)
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


def test_a_build_says_what_it_compiles_and_how_long_it_took_here():
    # `build_ext --help` reads the extension's sources (as a build does) and stops before compiling.
    code, stderr = run_setup("build_ext", "--help", FASTSEG_CUDA="0", MAX_JOBS="3")
    cpp_files = 1 + len(list((ROOT / "csrc" / "cpu").glob("*.cpp")))
    assert code == 0
    assert f"fastseg: compiling the kernels ({cpp_files} C++ files, 3 parallel jobs)" in stderr
    assert "took" in stderr and "-v" in stderr
    code, stderr = run_setup()  # pip's metadata steps compile nothing and say nothing
    assert code == 0 and "compiling" not in stderr


def test_every_recipe_ships_as_package_data(tmp_path):
    # `pip install .` copies what build_py collects: every YAML recipe under fastseg/configs, each
    # folder declared as a package (setuptools warns per folder, and plans to drop them, otherwise)
    code, stderr = run_setup("build_py", "--build-lib", str(tmp_path))
    assert code == 0, stderr
    assert "absent from the `packages` configuration" not in stderr
    recipes = sorted(path.relative_to(ROOT) for path in (ROOT / "fastseg" / "configs").rglob("*.yaml"))
    shipped = sorted(path.relative_to(tmp_path) for path in (tmp_path / "fastseg" / "configs").rglob("*.yaml"))
    assert recipes and shipped == recipes


def test_metadata_uses_no_deprecated_setuptools_form(tmp_path):
    # pip's metadata step (egg_info) validates pyproject.toml; setuptools warns, and from 2027 fails,
    # on forms it has deprecated (e.g. `license = { text = ... }` instead of an SPDX string)
    code, stderr = run_setup("egg_info", "--egg-base", str(tmp_path))
    assert code == 0, stderr
    assert "deprecat" not in stderr.lower(), stderr
