"""Every ``udareid`` command README.md shows exists: a renamed or removed command fails here, not in a
reader's terminal. Commands are read from code (fenced blocks and inline spans) where a command line
starts: at the start of the code, after a shell operator, or after ``python -m uda_reid[.cli]``."""

from __future__ import annotations

import json
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


def _own_cameras_block() -> list[str]:
    """The command lines of README.md's "Your own cameras" code block."""
    text = README.read_text()
    section = text[text.index("## Your own cameras"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("udareid ")]


def test_the_readmes_extract_and_search_run_as_written_on_a_folder_of_ordinary_file_names(tmp_path, monkeypatch):
    """``extract --images DIR`` and ``search`` exactly as README.md shows them, on crops named as a camera
    or a person names them (no camera ids, a space, a tab and a line break in a name)."""
    import shlex
    import shutil

    from tiny_reid_data import save_tiny_checkpoint, write_two_domains

    crops = sorted((write_two_domains(tmp_path / "data") / "DukeMTMC-reID" / "query").glob("*.jpg"))
    folder = tmp_path / "my_cameras"
    folder.mkdir()
    names = ["IMG_0001.jpg", "photo 2.jpg", "tab\tname.jpg", "line\nbreak.jpg", '"quoted".jpg']
    for crop, name in zip(crops, names):
        shutil.copy(crop, folder / name)
    shutil.copy(crops[-1], tmp_path / "person.jpg")
    weights, _, _ = save_tiny_checkpoint(tmp_path / "best.pt")
    monkeypatch.chdir(tmp_path)
    lines = {line.split()[1]: line for line in _own_cameras_block()}
    for command in ("extract", "search"):
        line = lines[command].replace("runs/.../best.pt", str(weights)).replace("/data/my_cameras", str(folder))
        result = CliRunner().invoke(cli, shlex.split(line)[1:] + ["--quiet"])
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if command == "extract":
            assert "read as one camera" in result.output
    ranked = json.loads((tmp_path / "results" / "ranked_lists.json").read_text())
    shown = {Path(match["path"]).name for query in ranked["ranked_lists"] for match in query["matches"]}
    assert shown == set(names)  # every name read back from features.npy.index.tsv as it was written
