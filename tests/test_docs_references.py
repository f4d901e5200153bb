"""The documentation and the citations of it stay in step.

* Every citation ``docs/<name>.md``, optionally followed by sections (``§7``, ``§4-5``, ``§5 and §8``),
  in README.md, CHANGELOG.md, docs/ and the .py / .yaml files of uda_reid/, recipes/, benchmarks/ and
  tests/ names a file that exists, and every cited section has a heading starting ``N.`` there.
* The private method-notes file the code used to cite is not cited any more: method facts are cited
  as ``docs/methods.md``.
* README.md stays a user's guide of at most 300 lines.
* Every relative markdown link ``](path)`` or ``](path#anchor)`` of README.md and docs/ points to an
  existing file, and its anchor (if any) to a heading of that file.

Each problem is reported as ``path:line: what is wrong``. The checks take the repository root as an
argument, so the last tests run them on a small tree with planted mistakes to show that they fail.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

#: Folders whose .py / .yaml files may cite the docs.
CODE_FOLDERS = ("uda_reid", "recipes", "benchmarks", "tests")
CODE_SUFFIXES = {".py", ".yaml", ".yml"}
#: Text files searched for the old citation (everything else is skipped: images, arrays, checkpoints).
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".sh", ".json", ".rst", ".in"}
#: Folders never searched: environments, caches, build outputs, run folders.
SKIPPED_FOLDERS = {".git", ".venv", "venv", "env", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                   "build", "dist", "runs", "node_modules", ".tox", ".eggs"}

# A citation: docs/<name>.md, then optional sections on the same line: §N, §N-M, joined by "and" or ",".
_SECTION = r"§[ \t]*\d+(?:[ \t]*[-–][ \t]*\d+)?"
CITATION = re.compile(
    r"(?<![\w./-])(?P<path>docs/[\w./-]+?\.md)(?![\w/-])"
    rf"(?P<sections>[ \t]+{_SECTION}(?:[ \t]*(?:,|and|&)[ \t]*{_SECTION})*)?"
)
SECTION = re.compile(r"§[ \t]*(\d+)(?:[ \t]*[-–][ \t]*(\d+))?")
# The old file name, assembled so that this file does not contain it.
OLD_NOTES = "METHODS" + ".md"
OLD_NOTES_ANY_CASE = re.compile(r"(?<![\w./-])(?P<prefix>[\w./-]*/)?(?P<name>" + re.escape(OLD_NOTES)
                                + r")(?P<section>[ \t]*§)?", re.IGNORECASE)
LINK = re.compile(r"\]\((?P<target>[^)\s]*)(?:[ \t]+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(?P<text>.+?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^[ \t]*(```|~~~)")


# ------------------------------------------------------------------------------------------ helpers
def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts[:-1]
    return any(part in SKIPPED_FOLDERS or part.endswith(".egg-info") for part in parts)


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def markdown_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    kept, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append((number, line))
    return kept


def headings(path: Path) -> list[str]:
    """The heading texts of a markdown file, in order (fenced code left out)."""
    text = _read(path) or ""
    return [m.group("text") for _, line in markdown_lines(text) if (m := HEADING.match(line))]


def heading_anchor(text: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    plain = plain.replace("`", "").replace("*", "").strip().lower()
    plain = re.sub(r"[^\w\- ]", "", plain)
    return plain.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file, with GitHub's -1, -2 ... for repeated headings."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for text in headings(path):
        anchor = heading_anchor(text)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def doc_files(root: Path) -> list[Path]:
    """README.md, CHANGELOG.md and every markdown file under docs/."""
    files = [root / name for name in ("README.md", "CHANGELOG.md") if (root / name).is_file()]
    if (root / "docs").is_dir():
        files += sorted(p for p in (root / "docs").rglob("*.md") if p.is_file())
    return files


def code_files(root: Path) -> list[Path]:
    """The .py / .yaml files of the folders that cite the docs."""
    files = []
    for folder in CODE_FOLDERS:
        if (root / folder).is_dir():
            files += sorted(p for p in (root / folder).rglob("*")
                            if p.suffix in CODE_SUFFIXES and p.is_file() and not _skipped(p, root))
    return files


def text_files(root: Path) -> list[Path]:
    """Every text file of the repository outside environments, caches, build outputs and hidden
    folders (but ``.ci/``, whose scripts are part of the project)."""
    files = []
    for folder, subfolders, names in os.walk(root):
        top = Path(folder) == root
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_FOLDERS and not d.endswith(".egg-info")
                               and (not d.startswith(".") or (top and d == ".ci")))
        in_ci = Path(folder).relative_to(root).parts[:1] == (".ci",)
        files += [Path(folder) / name for name in sorted(names) if in_ci or Path(name).suffix in TEXT_SUFFIXES]
    return files


# ------------------------------------------------------------------------------------------ checks
def citation_problems(root: Path) -> list[str]:
    """Citations of docs files or sections that do not exist, as ``path:line: ...``."""
    problems = []
    heading_cache: dict[Path, list[str]] = {}
    for path in [*doc_files(root), *code_files(root)]:
        text = _read(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in CITATION.finditer(line):
                where = f"{_relative(path, root)}:{number}"
                cited = match.group("path")
                target = root / cited
                if not target.is_file():
                    problems.append(f"{where}: cites {cited}, which does not exist")
                    continue
                if target not in heading_cache:
                    heading_cache[target] = headings(target)
                for section in SECTION.finditer(match.group("sections") or ""):
                    first = int(section.group(1))
                    last = int(section.group(2)) if section.group(2) else first
                    if last < first:
                        problems.append(f"{where}: cites {cited} {section.group(0)}, a range that runs backwards")
                        continue
                    for n in range(first, last + 1):
                        if not any(re.match(rf"{n}\.", h) for h in heading_cache[target]):
                            problems.append(f"{where}: cites {cited} §{n}, but {cited} has no heading starting "
                                            f"'{n}.'")
    return problems


def old_notes_problems(root: Path) -> list[str]:
    """Citations of the old method-notes file: its name in capitals anywhere, or, in code, a section
    citation of a lower-case notes file that is not ``docs/methods.md``."""
    problems = []
    code = set(code_files(root))
    for path in text_files(root):
        text = _read(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in OLD_NOTES_ANY_CASE.finditer(line):
                where = f"{_relative(path, root)}:{number}"
                cited = (match.group("prefix") or "") + match.group("name")
                if match.group("name") == OLD_NOTES:
                    problems.append(f"{where}: cites {cited}; method facts are cited as docs/methods.md §N")
                elif path in code and match.group("section") and match.group("prefix") != "docs/":
                    problems.append(f"{where}: cites {cited} with a section; write docs/methods.md")
    return problems


def readme_length_problems(root: Path) -> list[str]:
    lines = (root / "README.md").read_text(encoding="utf-8").splitlines()
    if len(lines) > README_MAX_LINES:
        return [f"README.md:{README_MAX_LINES + 1}: README.md has {len(lines)} lines, at most {README_MAX_LINES} "
                f"(move the details to docs/)"]
    return []


def link_problems(root: Path) -> list[str]:
    """Relative links of README.md and docs/ to missing files or missing headings."""
    problems = []
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    if (root / "docs").is_dir():
        files += sorted(p for p in (root / "docs").rglob("*.md") if p.is_file())
    for path in files:
        text = _read(path) or ""
        for number, line in markdown_lines(text):
            for match in LINK.finditer(line):
                target = match.group("target")
                where = f"{_relative(path, root)}:{number}"
                if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # a URL, mailto: ...
                    continue
                file_part, _, fragment = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                if file_part and not linked.exists():
                    problems.append(f"{where}: links to {target}, but {_relative(linked, root)} does not exist")
                    continue
                if fragment and linked.suffix == ".md" and linked.is_file() and fragment not in anchors(linked):
                    problems.append(f"{where}: links to {target}, but {_relative(linked, root)} has no heading "
                                    f"with the anchor #{fragment}")
    return problems


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------ the repository
def test_every_docs_citation_names_an_existing_file_and_section():
    problems = citation_problems(ROOT)
    assert not problems, _report(problems)


def test_methods_notes_have_the_sections_the_code_cites():
    numbered = [h for h in headings(ROOT / "docs/methods.md") if re.match(r"\d+\.", h)]
    assert [int(h.split(".")[0]) for h in numbered] == list(range(1, 11)), numbered


def test_no_citation_of_the_old_notes_file_remains():
    problems = old_notes_problems(ROOT)
    assert not problems, _report(problems)


def test_readme_is_at_most_300_lines():
    problems = readme_length_problems(ROOT)
    assert not problems, _report(problems)


def test_every_relative_link_of_readme_and_docs_resolves():
    problems = link_problems(ROOT)
    assert not problems, _report(problems)


def test_the_citations_are_found_at_all():
    """The pattern must see the code's citations; a pattern that matches nothing would pass vacuously."""
    cited = [line for path in code_files(ROOT) for line in (_read(path) or "").splitlines() if CITATION.search(line)]
    assert len(cited) >= 10


# ------------------------------------------------------------------------------------------ the checks fail
@pytest.fixture
def broken_tree(tmp_path: Path) -> Path:
    """A small repository with one of each mistake, at known lines. The citations are assembled, so
    that this file itself cites nothing that does not exist."""
    notes = "docs/methods.md"
    missing, gone = "docs" + "/missing.md", "docs" + "/gone.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / notes).write_text("# Notes\n\n## 1. First\n\ntext\n\n## 2. Second\n\n```\n## 3. In code\n```\n")
    (tmp_path / "uda_reid").mkdir()
    (tmp_path / "uda_reid" / "mod.py").write_text(
        '"""Module.\n\n'
        f"Facts: {notes} §2.\n"                      # line 3: fine
        f"Facts: {notes} §3.\n"                      # line 4: that heading is inside a code fence only
        f"See {missing} for more.\n"                 # line 5: no such file
        f"Both: {notes} §1-2 and §9.\n"              # line 6: no §9
        f"Old: {OLD_NOTES} §1.\n"                    # line 7: the old file
        '"""\n'
    )
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(f"# from {notes} §12\nseed: 1\n")  # line 1: no §12
    readme = ["# Title", "", f"[notes]({notes}#2-second)", f"[gone]({gone})",   # line 4: no such file
              f"[bad anchor]({notes}#3-in-code)", "[web](https://example.org/x.md)"]  # line 5: no such heading
    readme += ["filler"] * (README_MAX_LINES + 1 - len(readme))
    (tmp_path / "README.md").write_text("\n".join(readme) + "\n")
    return tmp_path


def test_a_broken_citation_is_reported_with_file_and_line(broken_tree: Path):
    problems = citation_problems(broken_tree)
    assert any(p.startswith("uda_reid/mod.py:4:") and "§3" in p for p in problems), problems
    assert any(p.startswith("uda_reid/mod.py:5:") and "missing.md" in p for p in problems), problems
    assert any(p.startswith("uda_reid/mod.py:6:") and "§9" in p for p in problems), problems
    assert any(p.startswith("recipes/r.yaml:1:") and "§12" in p for p in problems), problems
    assert any(p.startswith("README.md:4:") and "gone.md" in p for p in problems), problems
    assert len(problems) == 5, problems


def test_the_old_notes_file_is_reported_with_file_and_line(broken_tree: Path):
    problems = old_notes_problems(broken_tree)
    assert len(problems) == 1 and problems[0].startswith("uda_reid/mod.py:7:"), problems


def test_a_long_readme_is_reported(broken_tree: Path):
    problems = readme_length_problems(broken_tree)
    assert len(problems) == 1 and problems[0].startswith("README.md:"), problems


def test_a_broken_link_is_reported_with_file_and_line(broken_tree: Path):
    problems = link_problems(broken_tree)
    assert any(p.startswith("README.md:4:") and "gone.md" in p for p in problems), problems
    assert any(p.startswith("README.md:5:") and "#3-in-code" in p for p in problems), problems
    assert len(problems) == 2, problems


@pytest.mark.parametrize("heading, anchor", [
    ("1. k-reciprocal Jaccard distance", "1-k-reciprocal-jaccard-distance"),
    ("5. Camera-aware proxies (CAP, and PPLR's variant)", "5-camera-aware-proxies-cap-and-pplrs-variant"),
    ("`--set`", "--set"),
])
def test_heading_anchors_follow_github(heading: str, anchor: str):
    assert heading_anchor(heading) == anchor
