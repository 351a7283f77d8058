"""The report CLI end to end on synthetic studies: files, contents, exit codes."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from analysis_fixtures import SMOL_8, SMOL_32, SMOL_FIXED, write_default_like_study, write_mixed_study

from analysis import report
from analysis.load import load_study
from repeatability.records import artifacts

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    study = write_mixed_study(tmp_path_factory.mktemp("results"))
    out = study.parent / "out"
    md = report.write_report(study, out)
    return study, out, md


def test_report_files(mixed_report):
    _, out, md = mixed_report
    assert md == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.md",
                                                      "tables"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "answer.png", "loss_arms.png", "loss_spread.png", "loss_train.png", "loss_val.png", "paired_ratio_1.png",
        "perplexity_mean_per_seq.png", "perplexity_token_weighted.png",
        "variance_anova.png"]  # the seed-matched 8/32-bit arms are a crossed design
    assert all(p.read_bytes().startswith(PNG) for p in (out / "figures").iterdir())
    names = {p.name for p in (out / "tables").iterdir()}
    for stem in ("table1_quotes_perplexity_token_weighted", "table3_memory", "table10_quotes_times",
                 "cell_stats_token_weighted", "comparisons", "verdicts", "not_as_asked",
                 "problems", "setup", "generation_agreement", "generations_quotes_p0_greedy"):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names, stem
    assert "runs.csv" in names
    within = pd.read_csv(out / "tables" / "loss_within_cell.csv").set_index("cell")
    assert within.loc[SMOL_8.dirname, ["first_step", "first_step_tol"]].tolist() == [1, 1]
    assert within.loc[SMOL_FIXED.dirname, ["first_step", "first_step_tol"]].isna().all()
    disp = pd.read_csv(out / "tables" / "loss_dispersion.csv").set_index(["cell", "step"])
    assert disp.loc[(SMOL_32.dirname, 1), "n"] == 3  # trials 1-3 (4 failed, 5-6 not finished)


def test_report_markdown_says_what_happened(mixed_report):
    text = mixed_report[2].read_text()
    for heading in ("## Answer", "## Appendix: setup and environment", "### Setup: what actually ran",
                    "## Verdict per cell", "## Held-out perplexity",
                    "## Arm comparisons", "## Loss curves", "## Generations",
                    "## Memory and time", "## What could not run as asked",
                    "## Problems found while reading the study"):
        assert heading in text
    not_as_asked = text.split("## What could not run as asked")[1].split("## Problems")[0]
    assert "| failed " in not_as_asked and "MemoryError: cannot allocate 2 GB" in not_as_asked
    assert "| diverged " in not_as_asked and "loss is NaN at step 7" in not_as_asked
    assert re.search(r"paging not effective +\| 1, 2, 3, 4 ", not_as_asked)
    problems = text.split("## Problems found while reading the study")[1]
    assert "schema version 99 is not supported" in problems and "corrupted JSON" in problems
    assert "bitwise repeatable: every adapter is identical" in text
    assert "WARNING: the environment differs inside a cell" in text
    assert "| packages.torch | 2.12.0 (3); 2.13.0 (1,2,4,6) |" in text.replace("  ", "")
    assert "X was higher in 3 of 3 trials (Wilcoxon signed-rank p = 0.25" in text
    assert "| 1       | 20    " in text or "| 1       | 20 " in text  # Table 1, trial 1, 8-bit
    assert "CPU peak RSS during the run (MB)" in text  # Table 3 labelled as what it is
    assert "paged_adamw_8bit / 8 / True" in text  # requested bits and paging, in the setup
    assert (f"- `{SMOL_8.dirname}`: Adam state 8-bit (100.0% of trainable parameters with 8-bit "
            "state), paging effective False, device cpu / float32") in text


def test_report_html_is_self_contained(mixed_report):
    _, out, _ = mixed_report
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 9 and 'src="figures/' not in html
    assert base64.b64decode(images[0]) == (out / "figures" / "answer.png").read_bytes()
    assert '<h2 id="what-could-not-run-as-asked">What could not run as asked</h2>' in html and "<table" in html


def test_cli_default_output_and_the_study_still_loads(tmp_path, capsys):
    study = write_default_like_study(tmp_path)
    assert report.main([str(study)]) == 0
    printed = capsys.readouterr().out
    assert printed == f"{study / '_report' / 'report.md'}\n"
    reloaded = load_study(study)  # the report folder is never taken for a cell
    assert len(reloaded.runs) == 14 and reloaded.problems == []
    text = (study / "_report" / "report.md").read_text()
    assert "| 8-bit vs 32-bit " in text  # the comparison's column, in the Answer's short labels
    row = pd.read_csv(study / "_report" / "tables" / "comparisons.csv").iloc[0]
    assert bool(row["paired"]) and row["paired_trials"] == "[1, 2, 3, 4, 5, 6, 7]"
    assert row["wilcoxon_p"] == pytest.approx(2 / 2 ** 7)  # 8-bit above 32-bit in all 7 pairs


def test_cli_rejects_a_study_without_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "empty")])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "no run directories" in captured.err
    assert captured.err.count("\n") == 1


def test_cli_subprocess_lists_bad_runs_on_stderr_and_reports_the_rest(mixed_report, tmp_path):
    study = mixed_report[0]
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(study), "--out",
                           str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout == f"{tmp_path / 'r' / 'report.md'}\n"
    lines = proc.stderr.splitlines()
    assert len(lines) == 2  # one line per unreadable run, nothing else
    assert lines[0].startswith(f"WARNING analysis.load: {SMOL_32.dirname}/trial-06: summary: ")
    assert lines[0].endswith(f"schema version 99 is not supported (this code reads "
                             f"{artifacts.SUPPORTED_SCHEMA_VERSIONS}); use the repeatability version "
                             "that wrote it")
    assert lines[1].startswith(f"WARNING analysis.load: {SMOL_8.dirname}/trial-05: state: ")
    assert "corrupted JSON" in lines[1]


def test_cli_subprocess_nonexistent_path(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "missing")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {tmp_path / 'missing'}: no such study directory\n"
