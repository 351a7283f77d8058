"""Task scores in the report (analysis.compute.task_scores, analysis.present.sections_tasks) on a
synthetic study whose numbers are known: spreads, baselines, TOST on the difference, the Answer."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import report
from analysis.compute import task_scores
from analysis.config import AnalysisConfig
from analysis.load import load_study
from analysis.present.verdict_words import task_comparisons_in_words
from repeatability.config import evaluators
from tests.analysis_fixtures import SMOL_8, write_run, write_task_study


def _study(tmp_path, **kw):
    return load_study(write_task_study(tmp_path, **kw))


def test_spreads_baselines_and_equivalence(tmp_path) -> None:
    study = _study(tmp_path)
    spreads = task_scores.spreads(study.runs).set_index(["cell", "metric"])
    row = spreads.loc[(SMOL_8.dirname, "metrics.accuracy")]
    assert row["n"] == 5 and row["spread"] == pytest.approx(0.04) and row["mean"] == pytest.approx(0.62)
    assert row["ppl_spread"] == pytest.approx(55 / 51)
    base = task_scores.baselines(study.runs).set_index(["baseline", "metric"])["value"]
    assert base[("zero_shot", "metrics.accuracy")] == 0.25 and base[("few_shot", "metrics.accuracy")] == 0.31
    config = AnalysisConfig(task_margin=0.02)
    comp = task_comparisons_in_words(task_scores.compare(study.runs, config), config).set_index("metric")
    acc = comp.loc["metrics.accuracy"]
    assert acc["design"] == "paired" and acc["mean_diff"] == pytest.approx(-0.004)
    assert acc["tost_p"] < 0.05 and acc["verdict"].startswith("equivalent within ±2 points")
    # at ±1 point the same five pairs are not enough: inconclusive, never "no difference"
    config = AnalysisConfig(task_margin=0.001)
    tight = task_comparisons_in_words(task_scores.compare(study.runs, config), config).set_index("metric")
    assert tight.loc["metrics.accuracy", "verdict"].startswith("inconclusive with 5 paired trials")


def test_identical_scores_in_every_pair_are_said_so_without_a_degenerate_p(tmp_path) -> None:
    """Both arms scoring the same in every paired trial (the QA half of the task study): the t-based
    TOST has zero variance there, so the verdict says "identical" and quotes no p."""
    same = [0.60, 0.62, 0.64, 0.61, 0.63]
    compared = task_scores.compare(_study(tmp_path, acc_8=same, acc_32=same).runs)
    assert compared.set_index("metric").loc["metrics.accuracy", "all_equal"]
    acc = task_comparisons_in_words(compared, AnalysisConfig()).set_index("metric").loc["metrics.accuracy"]
    assert acc["mean_diff"] == 0 and acc["verdict"].startswith("identical in all 5 paired trials")
    assert "p =" not in acc["verdict"]


def test_a_clear_difference_is_called_different(tmp_path) -> None:
    study = _study(tmp_path, acc_8=[0.40, 0.42, 0.41, 0.43, 0.44])
    acc = task_comparisons_in_words(task_scores.compare(study.runs), AnalysisConfig()).set_index("metric")
    acc = acc.loc["metrics.accuracy"]
    assert acc["mean_diff"] == pytest.approx(0.42 - 0.624) and acc["verdict"].startswith("different")


def test_report_answers_with_task_scores_and_keeps_other_reports_unchanged(tmp_path) -> None:
    write_task_study(tmp_path)
    md = report.write_report(tmp_path / "tasks").read_text()
    answer = md.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert "accuracy (points), `8-bit` vs `32-bit`: mean 62.0 vs 62.4" in answer
    assert "base zero-shot 25.0; base few-shot (k = 3) 31.0" in answer
    assert "## Task scores" in md and "task-score margin ±1 point" in md
    assert all(e.method in md for e in evaluators.EVALUATORS.values())  # each evaluator's method, as declared
    tables = tmp_path / "tasks" / "_report" / "tables"
    assert pd.read_csv(tables / "task_spreads.csv").shape[0] == 4  # 2 cells x (accuracy, macro-F1)
    assert (tmp_path / "tasks" / "_report" / "figures" / "task_accuracy.png").exists()


def test_no_task_scores_no_task_section(tmp_path) -> None:
    for trial in (1, 2):
        write_run(tmp_path, "plain", SMOL_8, trial)
    md = report.write_report(tmp_path / "plain").read_text()
    assert "Task scores" not in md and "task-score margin" not in md
