"""The user mistakes of every CLI (train, evaluate, predict): one line on stderr, exit status 2, no
traceback (``--debug`` shows it); typed overrides; the palette check; evaluate's default output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_evaluate_cli import run_cli, write_checkpoint
from test_predict_cli import write_images

from fastseg import evaluate, predict, train
from fastseg.engine.cli import UsageError, default_threads, one_line, set_threads

REPO = Path(__file__).resolve().parent.parent
MAINS = {"train": train.main, "evaluate": evaluate.main, "predict": predict.main}


def assert_one_line_error(capsys, code: int, *words: str) -> str:
    """Exit status 2 and exactly one stderr line, ``python -m fastseg.<cli>: error: ...`` with ``words``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("python -m fastseg.") and ": error: " in lines[0], err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def cli_args(name: str, tmp_path, checkpoint) -> list[str]:
    """The arguments each CLI needs besides the one under test."""
    if name == "train":
        return ["--output-dir", str(tmp_path / "run")]
    base = ["--checkpoint", str(checkpoint), "--device", "cpu"]
    if name == "predict":
        write_images(tmp_path / "in")
        return [*base, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    return base


@pytest.mark.parametrize("name", sorted(MAINS))
@pytest.mark.parametrize("override, words", [
    ("train.batch_size=abc", ["train.batch_size", "'abc'", "str", "integer"]),
    ("train.lr=abc", ["train.lr", "'abc'", "a number is wanted"]),
    ("train.amp=fp32", ["train.amp", "'fp32'", "'bf16'"]),
    ("evaluate.scales=0.5", ["evaluate.scales", "0.5", "list"]),
    ("data.num_classes=nine", ["data.num_classes", "'nine'"]),
])  # fmt: skip
def test_a_value_of_the_wrong_type_is_named_with_the_type_wanted(name, override, words, tmp_path, capsys):
    checkpoint = tmp_path / "ck.pt"
    write_checkpoint(checkpoint)
    code = MAINS[name]([*cli_args(name, tmp_path, checkpoint), "--set", override])
    assert_one_line_error(capsys, code, *words)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(MAINS))
def test_override_without_equals_sign_and_unknown_option(name, tmp_path, capsys):
    checkpoint = tmp_path / "ck.pt"
    write_checkpoint(checkpoint)
    args = cli_args(name, tmp_path, checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        MAINS[name]([*args, "--set", "train.iterations"])
    assert_one_line_error(capsys, exit_info.value.code, "'train.iterations'", "dotted.key=value")
    with pytest.raises(SystemExit) as exit_info:
        MAINS[name]([*args, "--no-such-option"])
    assert_one_line_error(capsys, exit_info.value.code, "--no-such-option")


@pytest.mark.parametrize("name", sorted(MAINS))
def test_missing_config_and_a_yaml_file_as_checkpoint(name, tmp_path, capsys):
    checkpoint = tmp_path / "ck.pt"
    write_checkpoint(checkpoint)
    args = cli_args(name, tmp_path, checkpoint)
    assert_one_line_error(capsys, MAINS[name]([*args, "--config", "does_not_exist"]), "'does_not_exist'", "default")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {lr: 0.01}\n")
    if name == "train":
        code = train.main(["--resume", str(recipe)])
    else:
        code = MAINS[name](["--checkpoint", str(recipe), *args[2:]])
    assert_one_line_error(capsys, code, "recipe.yaml")
    missing = tmp_path / "none.pt"
    code = train.main(["--resume", str(missing)]) if name == "train" else MAINS[name](["--checkpoint", str(missing), *args[2:]])
    assert_one_line_error(capsys, code, "none.pt")


@pytest.mark.parametrize("name", sorted(MAINS))
def test_corrupt_checkpoint_is_one_line(name, tmp_path, capsys):
    """A checkpoint with a flipped byte (its digest no longer matches) is refused in one line by every CLI."""
    args = cli_args(name, tmp_path, tmp_path / "ck.pt")
    flipped = tmp_path / "flipped.pt"
    write_checkpoint(flipped)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    code = train.main(["--resume", str(flipped), *args]) if name == "train" else \
        MAINS[name](["--checkpoint", str(flipped), *args[2:]])
    assert_one_line_error(capsys, code, "flipped.pt")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="train.lr = 'abc'"):
        train.main(["--output-dir", str(tmp_path / "run"), "--set", "train.lr=abc", "--debug"])


def test_subprocess_exit_status_and_single_stderr_line(tmp_path):
    done = run_cli("fastseg.train", "--output-dir", str(tmp_path / "run"), "--set", "train.lr=abc")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "python -m fastseg.train: error: train.lr = 'abc' (str): a number is wanted", done.stderr
    assert "Traceback" not in done.stderr


def test_exponent_numbers_in_overrides_are_numbers(tmp_path):
    args = train.parse_args(["--set", "train.lr=1e-3", "train.weight_decay=5E-4", "train.min_lr=-2e+1"])
    config, _, _ = train.resolve_run(args)
    assert config["train"]["lr"] == 1e-3 and type(config["train"]["lr"]) is float
    assert config["train"]["weight_decay"] == 5e-4 and config["train"]["min_lr"] == -20.0


def test_unknown_split_and_model_option_are_user_errors(tmp_path, capsys):
    write_checkpoint(tmp_path / "ck.pt")
    base = ["--checkpoint", str(tmp_path / "ck.pt"), "--device", "cpu", "--output", str(tmp_path / "r.json")]
    assert_one_line_error(capsys, evaluate.main([*base, "--split", "test"]), "'test'", "split")
    assert_one_line_error(capsys, evaluate.main([*base, "--set", "model.options.bogus=3"]), "bogus")
    assert_one_line_error(capsys, evaluate.main([*base, "--set", "model.options.channels=8"]), "do not fit", "ck.pt")


def test_error_from_a_loader_worker_is_its_original_message():
    wrapped = RuntimeError("Caught BadSampleError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\nfastseg.data.BadSampleError: cannot read b.png: bad")  # fmt: skip
    assert one_line(wrapped) == "cannot read b.png: bad"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/x/y.pt")) == "No such file or directory: /x/y.pt"


def test_palette_of_other_classes_is_refused(tmp_path, capsys):
    write_checkpoint(tmp_path / "ck.pt")  # the default recipe: 9 synthetic classes
    write_images(tmp_path / "in")
    base = ["--checkpoint", str(tmp_path / "ck.pt"), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--device", "cpu"]  # fmt: skip
    for palette in ("cityscapes", "ade20k"):
        code = predict.main([*base, "--palette", palette])
        assert_one_line_error(capsys, code, f"--palette {palette}", "9 classes of 'synthetic'", "--palette dataset")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([*base, "--palette", "rainbow"])
    assert_one_line_error(capsys, exit_info.value.code, "rainbow", "cityscapes")
    predict.check_palette_fits("cityscapes", "kitti", 19)  # KITTI uses the Cityscapes classes
    predict.check_palette_fits("cityscapes", "folder", 19)  # classes only on disk: the count decides
    with pytest.raises(UsageError, match="150 classes of ade20k"):
        predict.check_palette_fits("ade20k", "folder", 19)


def test_evaluate_writes_next_to_the_checkpoint_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    write_checkpoint(tmp_path / "run" / "checkpoint_best.pth")
    code = evaluate.main(["--checkpoint", str(tmp_path / "run" / "checkpoint_best.pth"), "--device", "cpu", "--workers", "0"])
    assert code == 0
    expected = tmp_path / "run" / "checkpoint_best_val_results.json"
    assert f"wrote {expected}" in capsys.readouterr().out
    assert json.loads(expected.read_text())["num_images"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "nothing written to the working directory"


def test_default_threads_are_the_usable_cores_shared_by_the_local_ranks(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_threads() == 1


def test_threads_requested_else_omp_num_threads_else_default(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    previous = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_threads(None) == 3 and torch.get_num_threads() == 3
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        with pytest.raises(UsageError, match="at least 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("orig_argv, torch_first, expected", [
    (["python", "-m", "fastseg.train"], False, "PASSIVE"),
    (["python", "-u", "-m", "fastseg.evaluate", "--checkpoint", "x"], False, "PASSIVE"),  # as torchrun starts ranks
    (["python", "-m", "fastseg.train"], True, "None"),  # too late: OpenMP already read its settings
    (["python", "-c", "import fastseg"], False, "None"),  # a library user's process is left alone
    (["python", "-m", "fastsegment"], False, "None"),
])  # fmt: skip
def test_fastseg_commands_make_waiting_openmp_threads_sleep(orig_argv, torch_first, expected):
    """``python -m fastseg.*`` sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP."""
    probe = (f"import sys; sys.orig_argv = {orig_argv!r}; {'import torch; ' if torch_first else ''}import fastseg, os; "
             "print(os.environ.get('OMP_WAIT_POLICY'))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == expected
