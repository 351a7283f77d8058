"""Committed studies rebuild: `python -m analysis.report results/<study>` on the committed run
records gives the committed report's tables (the formatted .md/.tex byte for byte; the full-precision
.csv to 1e-9 relative, since float reductions may differ in their last bits between CPUs) and the
same Markdown (but the "Generated" time). The rebuild reads only what git tracks, as a fresh clone
would: adapter weights left in a working copy by a local re-run (ignored files) are not read."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis import report

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.parent.parent for p in ROOT.glob("results/*/_report/report.md")
                 if any(p.parent.parent.glob("*/trial-*/summary.json")))
STAMP = re.compile(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
# a report built with --compare names each compared study: "This study (`x`) next to `y` (results/y)."
COMPARED = re.compile(r"^This study \(`[^`]+`\) next to (.*?)\. Each study", re.MULTILINE)


def compared_studies(report_md: str) -> list[str]:
    """The --compare paths a committed report was built with (as it names them)."""
    found = COMPARED.search(report_md)
    return re.findall(r"`[^`]+` \(([^)]+)\)", found.group(1)) if found else []


def test_a_committed_study_with_run_records_exists():
    assert STUDIES, "no committed study ships its run records"


def tracked_copy(studies: list[str], dest: Path) -> None:
    """Copy what git tracks of each study (the run records a fresh clone has) under ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *studies], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, listed):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


@pytest.mark.parametrize("study", STUDIES, ids=[s.name for s in STUDIES])
def test_committed_study_rebuilds_to_its_committed_report(study, tmp_path, monkeypatch):
    committed = study / "_report"
    compare = compared_studies((committed / "report.md").read_text())
    clone = tmp_path / "clone"
    if (ROOT / ".git").exists():
        tracked_copy([f"results/{study.name}", *compare], clone)
    else:  # an unpacked archive holds only what was committed
        clone = ROOT
    monkeypatch.chdir(clone)  # the report names its study as it was given: results/<study>
    out = tmp_path / "out"
    md = report.write_report(Path("results") / study.name, out, compare=compare)
    rebuilt = {p.name for p in (out / "tables").iterdir()}
    assert rebuilt == {p.name for p in (committed / "tables").iterdir()}
    for name in sorted(rebuilt):
        new, old = out / "tables" / name, committed / "tables" / name
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(pd.read_csv(new), pd.read_csv(old), check_exact=False, rtol=1e-9, obj=name)
        else:
            assert new.read_bytes() == old.read_bytes(), name
    assert STAMP.sub("", md.read_text()) == STAMP.sub("", (committed / "report.md").read_text())
