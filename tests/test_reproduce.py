"""``python -m repeatability.reproduce``: a published study's runs re-run from their recorded
overrides into another folder, then compared with it seed for seed; bad input in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from repeatability import reproduce
from repeatability.records import artifacts
from tests.conftest import run_cli, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_plan_of_the_published_default_study_is_the_cards_command() -> None:
    """results/default: one sweep per optimizer, its trials together, overrides as recorded."""
    sweeps = reproduce.plan(ROOT / "results" / "default")
    assert {s.overrides: s.trials for s in sweeps} == {
        ("optim=paged_adamw_32bit", "study=default"): (1, 2, 3, 4, 5, 6, 7),
        ("optim=paged_adamw_8bit", "study=default"): (1, 2, 3, 4, 5, 6, 7)}
    [one] = reproduce.plan(ROOT / "results" / "default", {1}, {"smollm2-135m__quotes__paged_adamw_8bit"})
    assert one.argv("runs") == ["-m", "trial=1", "optim=paged_adamw_8bit", "study=default", "results_dir=runs"]


def test_plan_of_an_lr_grid_keeps_each_runs_own_overrides() -> None:
    sweeps = reproduce.plan(ROOT / "results" / "explain-edge", {1}, {
        "smollm2-135m__quotes__paged_adamw_8bit-maps_bnb_0.41.0__lr0.001"})
    assert [s.overrides for s in sweeps] == [("train.lr=0.001", "optim=paged_adamw_8bit_bnb041",
                                              "experiments=explain_edge_bnb041")]


@pytest.mark.parametrize("args, message", [
    (["results/no-such-study"], "results/no-such-study: no such published study"),
    (["results/default", "--trials", "9"], "results/default: no trial 9; its trials are 1, 2, 3, 4, 5, 6, 7"),
    (["results/default", "--cells", "nope"], "results/default: no cell nope; its cells are"),
    (["results/default", "--trials", "one"], "--trials one: use comma-separated numbers"),
    (["results/default", "--results-dir", "results"], "would write into the published study results/default"),
    (["results/paper-tables-1-2"], "no run records with overrides.yaml (an imported table cannot be re-run)"),
])
def test_bad_input_is_one_line_before_any_training(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "repeatability.reproduce", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_reproducing_a_tiny_study_repeats_it_bit_for_bit(tiny_model_dir: Path, quotes_jsonl: Path,
                                                         tmp_path: Path) -> None:
    """Publish trials 1-2 of a tiny study, reproduce trial 2 elsewhere: the same adapter, and the
    report compares the two and says so in its headline."""
    published = tmp_path / "results"
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, published)
    assert run_cli(["-m", "trial=1,2", "optim=paged_adamw_8bit", "study=tiny", *args]) == 0
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "repeatability.reproduce", str(published / "tiny"), "--trials", "2",
                           "--results-dir", str(runs)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    [again] = list(artifacts.iter_run_dirs(runs / "tiny"))
    [original] = [p for p in artifacts.iter_run_dirs(published / "tiny") if p.name == "trial-02"]
    assert artifacts.read_summary(again)["adapter"]["sha256"] == artifacts.read_summary(original)["adapter"]["sha256"]
    report_md = Path(done.stdout.strip().splitlines()[-1])
    assert report_md == runs / "tiny" / "_report" / "report.md"
    text = report_md.read_text()
    assert "reproduced `tiny`" in text and "bit for bit: all 1 seed-matched runs" in text
    machines = pd.read_csv(report_md.parent / "tables" / "reproducibility_machines.csv")
    assert machines["study"].tolist() == ["tiny", "tiny"] and machines["runs"].tolist() == [1, 2]
    assert machines["torch_threads"].tolist() == [1, 1] and machines["cpu"].nunique() == 1
