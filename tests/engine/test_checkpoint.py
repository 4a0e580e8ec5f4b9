"""Atomic checkpoint writes and their loading."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fastseg.engine import checkpoint
from fastseg.engine.checkpoint import CheckpointError, bare_model, load_checkpoint, save_checkpoint


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
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError,
                       match=r"other.pt is not a fastseg checkpoint \(missing \['model', 'config', 'digest'\]\)"):
        load_checkpoint(tmp_path / "other.pt")


class _Payload:
    """Unpickling it would run code: here, write a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_loading_never_runs_code_from_the_file(tmp_path):
    """Was torch.load(weights_only=False): a crafted checkpoint ran code in evaluate, predict and train --resume."""
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.randn(2)}, "config": {}, "extra": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="only tensors and plain values are loaded"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def _data_offset(path, member_suffix: str) -> int:
    """File offset of the stored bytes of the zip member ending with ``member_suffix``."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_length + extra_length


def test_a_flipped_bit_in_the_weights_is_caught(tmp_path):
    """torch.load does not check the zip CRC: without the digest a bit flip loaded silently."""
    path = tmp_path / "ckpt.pth"
    weights = torch.randn(64, 64)
    save_checkpoint({"model": {"conv.weight": weights}, "config": {"a": 1}}, path)
    offset = _data_offset(path, "data/0") + 1000
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    flipped = torch.load(path, weights_only=True)["model"]["conv.weight"]
    assert not torch.equal(flipped, weights), "the flip reached the weights and torch.load accepted it"
    with pytest.raises(CheckpointError, match="ckpt.pth is corrupt"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_by_name(tmp_path):
    good = {"model": {"head.weight": torch.randn(3, 2), "bn.running_var": torch.rand(3)}, "config": {}}
    with pytest.raises(CheckpointError, match="not writing .*1 model tensor"):
        save_checkpoint({**good, "model": {**good["model"], "bn.running_var": torch.tensor([1.0, float("nan")])}},
                        tmp_path / "never.pth")
    assert not (tmp_path / "never.pth").exists()
    # a file written by other means (a valid digest over NaN weights) is refused when loaded
    bad = {"model": {"head.weight": torch.full((3, 2), float("inf")), "bn.running_var": torch.rand(3)}, "config": {}}
    torch.save({**bad, checkpoint.DIGEST_KEY: checkpoint.state_digest(bad)}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="non-finite model weights in 1 tensor\\(s\\): head.weight"):
        load_checkpoint(tmp_path / "nan.pth")


def test_orphan_temporary_files_are_removed(tmp_path):
    save_checkpoint({"model": {"w": torch.randn(2)}, "config": {}}, tmp_path / checkpoint.LATEST_NAME)
    orphans = [tmp_path / f".{checkpoint.LATEST_NAME}.x1y2.tmp", tmp_path / f".{checkpoint.BEST_NAME}.abc.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert sorted(checkpoint.remove_orphan_temp_files(tmp_path)) == sorted(orphans)
    assert sorted(os.listdir(tmp_path)) == [checkpoint.LATEST_NAME, "notes.tmp"]
