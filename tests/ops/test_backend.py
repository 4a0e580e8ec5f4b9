"""Backend choice, the fallback without the extension, and build_info."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from fastseg import ops
from fastseg.ops import backend, extension


def test_build_info_reports_the_build():
    info = ops.build_info()
    assert set(info) >= {"loaded", "reason", "cpu", "cuda", "cuda_version", "cuda_archs", "torch_version", "openmp"}
    if info["loaded"]:
        assert info["cpu"] and info["torch_version"] == torch.__version__.split("+")[0]
        assert info["cuda"] == bool(info["cuda_version"])
    else:
        assert info["reason"]


def test_set_and_use_backend():
    assert backend.get_backend() == "auto"
    with ops.use_backend("reference"):
        assert backend.get_backend() == "reference"
        assert backend.resolve(torch.device("cpu")) == "reference"
    assert backend.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("fast")
    with pytest.raises(ValueError, match="asked for tensors on cpu"):
        backend.resolve(torch.device("cpu"), "cuda")


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(extension, "_MODULE", None)
    monkeypatch.setattr(extension, "_REASON", "simulated missing extension")
    monkeypatch.setattr(extension, "_INFO", {})
    monkeypatch.setattr(backend, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="simulated missing extension"):
        assert backend.resolve(torch.device("cpu")) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.resolve(torch.device("cpu")) == "reference"
    with pytest.raises(RuntimeError, match="needs fastseg._C"):
        backend.resolve(torch.device("cpu"), "cpu")
    features = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 2, (1, 4, 4))
    centers, _ = ops.class_avg_pool(features, labels, 2)
    torch.testing.assert_close(centers, ops.class_avg_pool_reference(features, labels, 2)[0])


def test_environment_variable_sets_the_default():
    code = "from fastseg.ops import backend; print(backend.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"FASTSEG_BACKEND": "reference", "PATH": ""})
    assert out.stdout.strip() == "reference"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    usable, reason = backend.triton_usable(torch.device("cpu"))
    assert not usable and "TRITON_INTERPRET=1" in reason
    with pytest.raises(RuntimeError, match="not usable"):
        backend.resolve(torch.device("cpu"), "triton")
