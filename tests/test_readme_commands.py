"""Every ``udareid`` command README.md shows exists: a renamed or removed command fails here, not in a
reader's terminal. Commands are read from code (fenced blocks and inline spans) where a command line
starts: at the start of the code, after a shell operator, or after ``python -m uda_reid[.cli]``."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from uda_reid.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+(?:\n[^`\n]+)?)`", re.S)  # fenced blocks, inline spans (may wrap once)
STARTS = re.compile(r"(?:^|&&|\|\||;|\$)\s*udareid\s|-m uda_reid(?:\.cli)?\s", re.M)


def readme_commands(text: str) -> set[tuple[str, ...]]:
    """The command paths (``("data", "stats")``) of the udareid command lines in ``text``'s code."""
    paths = set()
    for block, span in CODE.findall(text):
        code = block or span
        for start in STARTS.finditer(code):
            words = re.match(r"\s*((?:[a-z][a-z0-9-]*(?:\s+[a-z][a-z0-9-]*)*)?)", code[start.end():]).group(1).split()
            command, path = cli, []
            for word in words:  # down the groups; the first plain command ends the path, an unknown name too
                if not isinstance(command, click.Group):
                    break
                path.append(word)
                command = command.get_command(click.Context(cli), word)
                if command is None:
                    break
            paths.add(tuple(path))
    return {path for path in paths if path}


def test_the_readme_reader_finds_commands_as_the_readme_writes_them():
    text = ("```bash\npip install -e . && udareid adapt --source synthx\n  the udareid command line\n"
            "torchrun --nproc_per_node=4 -m uda_reid.cli usl --dataset x\n```\n"
            "also `udareid bench\nclustering` and `udareid data stats --json`; not ~/.cache/udareid/data\n"
            "| `udareid synth\\|recipes` |")
    assert readme_commands(text) == {("adapt",), ("usl",), ("bench", "clustering"), ("data", "stats"), ("synth",)}


def test_every_udareid_command_in_the_readme_exists_and_answers_help():
    commands = readme_commands(README.read_text())
    assert {("adapt",), ("usl",)} <= commands, "the README's command lines were not found"
    failing = {}
    for path in sorted(commands):
        result = CliRunner().invoke(cli, [*path, "--help"])
        if result.exit_code != 0:
            failing[" ".join(path)] = result.output.strip().splitlines()[-1:]
    assert not failing, f"README.md shows commands udareid does not have: {failing}"
