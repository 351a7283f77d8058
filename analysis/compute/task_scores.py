"""Task scores (accuracy, macro-F1, exact match, ROUGE; ``eval.tasks``) across identical trials.

Per cell: each score's spread between identical trials (max − min, in points) beside perplexity's
(max / min). Per (model, dataset): the base model's zero-/few-shot scores, recorded once per study.
Per comparison of two arms: the mean difference of each score with its CI, and whether the arms
are equivalent on it: TOST on the difference (statsmodels ``ttost_paired`` for seed-matched
trials, else ``ttost_ind`` with Welch's variance) against an absolute margin
(:attr:`analysis.config.AnalysisConfig.task_margin`, 0.01 = ±1 point); the words
(:func:`analysis.present.verdict_words.task_verdict`) follow the perplexity comparison's: "equivalent"
only when TOST p < α, "different" only when the difference test p < α, else "inconclusive".

The scores are the metrics declared with use ``task`` in :mod:`repeatability.records.metrics`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from analysis.compute.stats import PRIMARY_METRIC, comparison_pairs, metric_values, paired_trials
from analysis.config import DEFAULT, AnalysisConfig
from analysis.load import FINISHED, column
from repeatability.records import metrics as registry

TASK_METRICS = registry.keys("task")
SPREAD_COLUMNS = ("cell", "metric", "n", "mean", "std", "min", "max", "spread", "ppl_spread")
BASELINE_COLUMNS = ("model", "dataset", "baseline", "shots", "metric", "value")
COMPARE_COLUMNS = ("x", "y", "metric", "design", "n_x", "n_y", "mean_x", "mean_y", "mean_diff", "ci_low",
                   "ci_high", "tost_p", "diff_test", "diff_p", "all_equal")


def recorded(runs: pd.DataFrame) -> tuple[str, ...]:
    """The task metrics some finished run recorded."""
    done = runs[runs["status"].isin(FINISHED)]
    return tuple(m for m in TASK_METRICS if column(done, m).notna().any())


def spreads(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell and recorded task score: n, mean, std, min, max, spread (max − min) between
    identical trials, and perplexity's spread (max / min) over the same cell."""
    rows = []
    for metric in recorded(runs):
        for cell in sorted(runs["cell"].unique()):
            v = metric_values(runs, cell, metric)
            ppl = metric_values(runs, cell, PRIMARY_METRIC)
            ppl = ppl[ppl > 0]
            if v.empty:
                continue
            rows.append({"cell": cell, "metric": metric, "n": len(v), "mean": float(v.mean()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "min": float(v.min()),
                         "max": float(v.max()), "spread": float(v.max() - v.min()),
                         "ppl_spread": float(ppl.max() / ppl.min()) if len(ppl) else math.nan})
    return pd.DataFrame(rows, columns=list(SPREAD_COLUMNS))


def baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """The base model's scores per (model, dataset), zero-shot and few-shot (as recorded by the
    first finished run of that pair: every run of a study reads the same cached record)."""
    rows = []
    done = runs[runs["status"].isin(FINISHED)]
    for (model, dataset), group in done.groupby(["model", "dataset"], sort=True):
        first = group.iloc[0]
        for kind in ("zero_shot", "few_shot"):
            shots = first.get("tasks.few_shot_k", math.nan) if kind == "few_shot" else 0
            for metric in TASK_METRICS:
                name = metric.rsplit(".", 1)[-1]
                value = first.get(f"tasks.{kind}.{name}", math.nan)
                if value is not None and not pd.isna(value):
                    rows.append({"model": model, "dataset": dataset, "baseline": kind, "shots": shots,
                                 "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=list(BASELINE_COLUMNS))


def _test(x: np.ndarray, y: np.ndarray, margin: float, paired: bool, confidence: float) -> dict[str, float | str]:
    name = "paired t-test" if paired else "Welch t-test"
    out: dict[str, float | str] = {"tost_p": math.nan, "diff_test": name, "diff_p": math.nan,
                                   "ci_low": math.nan, "ci_high": math.nan}
    if min(x.size, y.size) < 2:
        return out
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: inf t, p 0 or 1
        if paired:
            p, test = ttost_paired(x, y, -margin, margin)[0], sps.ttest_rel(x, y)
        else:
            p, test = ttost_ind(x, y, -margin, margin, usevar="unequal")[0], sps.ttest_ind(x, y, equal_var=False)
        low, high = test.confidence_interval(confidence)
    return out | {"tost_p": float(p), "diff_p": float(test.pvalue), "ci_low": float(low), "ci_high": float(high)}


def compare(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT) -> pd.DataFrame:
    """Each pair of arms that differ only in the optimizer, on each recorded task score (``all_equal``:
    every paired difference is exactly 0, where the t-based tests degenerate at zero variance)."""
    rows = []
    for metric in recorded(runs):
        for x, y in comparison_pairs(runs):
            vx, vy = metric_values(runs, x, metric), metric_values(runs, y, metric)
            if vx.empty or vy.empty:
                continue
            trials = [t for t in paired_trials(runs, x, y) if t in vx.index and t in vy.index]
            paired = bool(trials)
            if paired:
                vx, vy = vx.loc[trials], vy.loc[trials]
            test = _test(vx.to_numpy(float), vy.to_numpy(float), config.task_margin, paired, 1 - config.alpha)
            all_equal = paired and len(trials) >= 2 and bool((vx.to_numpy(float) == vy.to_numpy(float)).all())
            rows.append({"x": x, "y": y, "metric": metric, "design": "paired" if paired else "unpaired",
                         "n_x": len(vx), "n_y": len(vy), "mean_x": float(vx.mean()), "mean_y": float(vy.mean()),
                         "mean_diff": float(vx.mean() - vy.mean()), **test, "all_equal": all_equal})
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


@dataclass(frozen=True)
class TaskResults:
    """The task-score section's numbers (:func:`task_results`): :func:`spreads`, :func:`baselines` and
    :func:`compare` (empty frames when no run recorded a task score)."""

    spreads: pd.DataFrame
    baselines: pd.DataFrame
    comparisons: pd.DataFrame


def task_results(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT) -> TaskResults:
    """Each task score's spread, the base model's baselines and the arms compared on each score."""
    return TaskResults(spreads=spreads(runs), baselines=baselines(runs), comparisons=compare(runs, config))
