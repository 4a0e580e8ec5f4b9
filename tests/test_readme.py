"""The README as a newcomer runs it: every Python snippet runs as written, every ``python -m fastseg.*``
command line parses with that command's parser, and every packaged recipe it names exists."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from fastseg import evaluate, predict, train
from fastseg.engine.config import packaged_configs

README = Path(__file__).resolve().parent.parent / "README.md"
PARSERS = {"fastseg.train": train.build_parser, "fastseg.evaluate": evaluate.build_parser,
           "fastseg.predict": predict.build_parser}  # fmt: skip


def code_blocks(language: str) -> list[str]:
    """The fenced ```language blocks of the README, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def command_lines() -> list[tuple[str, list[str]]]:
    """(module, arguments) of every ``python -m fastseg.X`` / ``torchrun ... -m fastseg.X`` line of the
    bash blocks (continuation lines joined, comments and the ``...`` placeholder dropped)."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "-m" in words and words[words.index("-m") + 1] in PARSERS:
                    at = words.index("-m") + 1
                    commands.append((words[at], [w for w in words[at + 1 :] if w != "..."]))
    return commands


PYTHON_SNIPPETS = code_blocks("python")
COMMANDS = command_lines()


def test_the_readme_has_snippets_and_commands_to_check():
    assert len(PYTHON_SNIPPETS) >= 1
    assert {module for module, _ in COMMANDS} == set(PARSERS)


@pytest.mark.parametrize("snippet", PYTHON_SNIPPETS, ids=[f"python-{i}" for i in range(len(PYTHON_SNIPPETS))])
def test_python_snippet_runs_as_written(snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(snippet, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("module, args", COMMANDS, ids=[" ".join([m, *a])[:80] for m, a in COMMANDS])
def test_command_line_parses(module, args):
    parsed = PARSERS[module]().parse_args(args)
    config = getattr(parsed, "config", None)
    if config is not None:
        assert config in packaged_configs(), f"{config} is not a packaged recipe"
