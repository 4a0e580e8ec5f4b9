"""Atomic checkpoint writes and their loading."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fastseg.engine.checkpoint import bare_model, load_checkpoint, save_checkpoint


def test_round_trip_and_bare_model(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint({"model": bare_model(model).state_dict(), "config": {"a": 1}}, tmp_path / "sub" / "last.pt")
    state = load_checkpoint(tmp_path / "sub" / "last.pt")
    torch.testing.assert_close(state["model"]["weight"], model.weight)
    assert state["config"] == {"a": 1}
    assert bare_model(torch.compile(model, backend="eager")) is model
    assert os.listdir(tmp_path / "sub") == ["last.pt"]


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    monkeypatch.undo()
    torch.testing.assert_close(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["last.pt"], "the temporary file is removed"


def test_bad_files_name_the_problem(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match=r"other.pt is not a fastseg checkpoint \(missing \['model', 'config'\]\)"):
        load_checkpoint(tmp_path / "other.pt")
