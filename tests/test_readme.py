"""The README a newcomer reads: short, and every command it names runs as far as can be checked
without training.

Commands are the lines of README.md's fenced code blocks that start with ``make ``,
``python -m `` or ``.venv/bin/python -m `` (shell line continuations joined, ``#`` comments
dropped). ``make X``: X is a Makefile target and ``make -n`` (a dry run: nothing is executed)
accepts the line; a published study, trial or cell it names exists under ``results/``.
``python -m mod``: ``python -m mod --help`` exits 0, and the group choices of a
``repeatability.run`` line exist (``tests/test_preflight_hydra.py`` composes those sweeps in
full). Every relative link of README.md, results/README.md and docs/*.md points to an existing
file, and a ``#fragment`` to a heading of the Markdown file it names.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 250
PREFIXES = ("make ", "python -m ", ".venv/bin/python -m ")
LINKED_DOCS = [README, ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code_lines(text: str) -> list[str]:
    """Every line inside a fenced code block, shell continuations joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def _commands() -> list[list[str]]:
    """The README's commands, split as the shell would (comments dropped)."""
    lines = [line for line in _code_lines(README.read_text()) if line.startswith(PREFIXES)]
    return [shlex.split(line, comments=True) for line in lines]


COMMANDS = _commands()
MAKE_LINES = [c for c in COMMANDS if c[0] == "make"]
PY_LINES = [c for c in COMMANDS if c[0] != "make"]
MODULES = sorted({c[2] for c in PY_LINES})


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE))


def test_readme_is_short_and_names_its_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; keep it to {MAX_LINES} (details go to docs/)"
    targets = {c[1] for c in MAKE_LINES}
    assert {"study", "test", "reproduce"} <= targets, targets
    assert "repeatability.run" in MODULES and "analysis.report" in MODULES, MODULES


def test_readme_has_no_placeholder_but_the_headline_marker() -> None:
    text = README.read_text()
    comments = re.findall(r"<!--(.*?)-->", text, re.DOTALL)
    assert all(c.strip().startswith("headline:") for c in comments), comments
    assert not re.search(r"\b(TODO|TBD|FIXME|XXX)\b", text)


@pytest.mark.parametrize("cmd", MAKE_LINES, ids=[" ".join(c) for c in MAKE_LINES])
def test_make_command_names_a_target_and_dry_runs(cmd: list[str]) -> None:
    variables = dict(a.split("=", 1) for a in cmd[1:] if "=" in a)
    targets = [a for a in cmd[1:] if "=" not in a and not a.startswith("-")]
    assert targets, cmd
    missing = set(targets) - _makefile_targets()
    assert not missing, f"the Makefile has no target {sorted(missing)}"
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *cmd[1:]], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    if "STUDY" in variables:
        _check_published_subset(variables)


def _check_published_subset(variables: dict[str, str]) -> None:
    """``make reproduce STUDY=… [TRIALS=…] [CELLS=…]`` names a published study, its cells and trials."""
    study = ROOT / "results" / variables["STUDY"]
    assert study.is_dir(), f"no published study {study.relative_to(ROOT)}"
    cells = (
        [study / c for c in variables["CELLS"].split(",")]
        if "CELLS" in variables
        else [p for p in study.iterdir() if p.is_dir() and not p.name.startswith("_")]
    )
    for cell in cells:
        assert cell.is_dir(), f"no cell {cell.relative_to(ROOT)}"
    for trial in variables["TRIALS"].split(",") if "TRIALS" in variables else []:
        assert any((cell / f"trial-{int(trial):02d}").is_dir() for cell in cells), f"no trial {trial} in {study.name}"


@pytest.mark.parametrize("module", MODULES)
def test_python_module_answers_help(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"python -m {module} --help exited {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip(), f"python -m {module} --help printed nothing"


@pytest.mark.parametrize("cmd", PY_LINES, ids=[" ".join(c[2:]) for c in PY_LINES])
def test_python_command_names_what_exists(cmd: list[str]) -> None:
    """Published studies it reads exist; a run's config-group choices exist."""
    for arg in cmd[3:]:
        path = arg.split("=", 1)[-1]
        if path.startswith("results/"):
            assert (ROOT / path).exists(), f"{' '.join(cmd)}: no {path}"
    if cmd[2] == "repeatability.run":
        from repeatability.launching import preflight

        preflight.check_group_values([a for a in cmd[3:] if a != "-m"])


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def _links(md: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("md", LINKED_DOCS, ids=[str(p.relative_to(ROOT)) for p in LINKED_DOCS])
def test_relative_links_resolve(md: Path) -> None:
    for link in _links(md):
        target, _, fragment = link.partition("#")
        path = (md.parent / target).resolve() if target else md
        assert path.exists(), f"{md.relative_to(ROOT)}: link {link} points to nothing"
        if fragment and path.suffix == ".md":
            assert fragment in _anchors(path), f"{md.relative_to(ROOT)}: no heading #{fragment} in {target or md.name}"


def test_readme_headline_is_the_published_default_reports() -> None:
    """The sentences under ``<!-- headline:default -->`` are the committed default report's headline,
    word for word (regenerated with the report, never typed by hand)."""
    lines = README.read_text().splitlines()
    at = lines.index("<!-- headline:default -->")
    report = (ROOT / "results" / "default" / "_report" / "report.md").read_text().split("## Answer\n\n", 1)[1]
    assert lines[at + 2] == report.split("\n", 1)[0]
