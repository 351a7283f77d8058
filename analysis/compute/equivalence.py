"""Equivalence or difference between two arms: the tests behind the words only they support.

On mean log perplexity (a ratio of geometric means, the natural scale of perplexity):

- equivalence: two one-sided tests (TOST, statsmodels ``ttost_paired`` for seed-matched
  trials, else ``ttost_ind`` with Welch's variance) against ±log(1 + margin);
- difference: the t-test of the same design (paired t-test, or Welch's t-test).

The verdict (:func:`analysis.present.verdict_words.comparison_verdict`) says "equivalent within ±m"
only when TOST p < α, "different" only when the difference test p < α, and otherwise "inconclusive
with n trials": no p-value above α is ever read as "no difference". Next to these, per pair: the
blow-up rates and Fisher's exact test (:mod:`analysis.compute.blowups`) and P(X > Y) with its
bootstrap CI.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from analysis.compute import blowups
from analysis.compute.stats import (
    PRIMARY_METRIC,
    compare_values,
    comparison_pairs,
    metric_values,
    p_x_gt_y_ci,
    paired_trials,
)
from analysis.config import DEFAULT, AnalysisConfig

COLUMNS = ("x", "y", "design", "n_x", "n_y", "judged_x", "judged_y", "blowups_x", "blowups_y",
           "fisher_p",
           "mean_log_diff", "ratio_gmean", "ratio_ci_low", "ratio_ci_high", "tost_p", "diff_test",
           "diff_p", "p_x_gt_y",
           "p_x_gt_y_ci_low", "p_x_gt_y_ci_high")


def tost(x_log: np.ndarray, y_log: np.ndarray, log_margin: float, paired: bool,
         confidence: float = 0.95) -> dict[str, Any]:
    """TOST p-value and the matching difference test on log values (X − Y).

    ``paired``: ``x_log[i]``, ``y_log[i]`` are one trial's arms. Fewer than 2 values per arm
    → NaN p-values. Returns ``tost_p``, ``diff_test``, ``diff_p``, ``mean_log_diff`` and the
    ``confidence`` interval of the geometric-mean ratio X/Y from the same t-test
    (``ratio_ci_low``, ``ratio_ci_high``: exp of the interval of the mean log difference).
    """
    x, y = np.asarray(x_log, dtype=float), np.asarray(y_log, dtype=float)
    name = "paired t-test" if paired else "Welch t-test"
    out: dict[str, Any] = {"tost_p": math.nan, "diff_test": name, "diff_p": math.nan,
                           "mean_log_diff": float(x.mean() - y.mean()) if x.size and y.size
                           else math.nan, "ratio_ci_low": math.nan, "ratio_ci_high": math.nan}
    if min(x.size, y.size) < 2:
        return out
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: inf t, p 0 or 1
        if paired:
            p = ttost_paired(x, y, -log_margin, log_margin)[0]
            test = sps.ttest_rel(x, y)
        else:
            p = ttost_ind(x, y, -log_margin, log_margin, usevar="unequal")[0]
            test = sps.ttest_ind(x, y, equal_var=False)
        low, high = test.confidence_interval(confidence)
    return out | {"tost_p": float(p), "diff_p": float(test.pvalue),
                  "ratio_ci_low": math.exp(low) if math.isfinite(low) else math.nan,
                  "ratio_ci_high": math.exp(high) if math.isfinite(high) else math.nan}


def _log_arms(runs: pd.DataFrame, x: str, y: str,
              metric: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Log values of both arms, paired by trial when the arms are seed-matched."""
    vx, vy = metric_values(runs, x, metric), metric_values(runs, y, metric)
    vx, vy = vx[vx > 0], vy[vy > 0]
    trials = [t for t in paired_trials(runs, x, y) if t in vx.index and t in vy.index]
    if trials:
        vx, vy = vx.loc[trials], vy.loc[trials]
        return np.log(vx.to_numpy()), np.log(vy.to_numpy()), True
    return np.log(vx.to_numpy()), np.log(vy.to_numpy()), False


def compare_pair(runs: pd.DataFrame, rates: pd.DataFrame, x: str, y: str,
                 config: AnalysisConfig = DEFAULT,
                 metric: str = PRIMARY_METRIC) -> dict[str, Any]:
    """One row of :func:`comparisons` (``rates``: :func:`analysis.compute.blowups.arm_rates`).

    ``n_x``/``n_y``: values in the t-tests (finite perplexities; the matched pairs when
    paired); ``judged_x``/``judged_y``: finished runs judged for blow-ups (diverged included).
    """
    rx, ry = rates.set_index("cell").loc[x], rates.set_index("cell").loc[y]
    lx, ly, paired = _log_arms(runs, x, y, metric)
    test = tost(lx, ly, config.log_margin, paired, 1 - config.alpha)
    low, high = p_x_gt_y_ci(lx, ly, paired, n_resamples=config.n_resamples, seed=config.seed)
    p_gt = compare_values(lx, ly)["p_x_gt_y"]
    return {"x": x, "y": y, "design": "paired" if paired else "unpaired", "n_x": len(lx),
            "n_y": len(ly), "judged_x": int(rx["n"]), "judged_y": int(ry["n"]),
            "blowups_x": int(rx["blowups"]), "blowups_y": int(ry["blowups"]),
            "fisher_p": blowups.fisher_p(int(rx["blowups"]), int(rx["n"]), int(ry["blowups"]),
                                         int(ry["n"])),
            **test, "ratio_gmean": math.exp(test["mean_log_diff"])
            if math.isfinite(test["mean_log_diff"]) else math.nan,
            "p_x_gt_y": p_gt, "p_x_gt_y_ci_low": low, "p_x_gt_y_ci_high": high}


def comparisons(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT,
                metric: str = PRIMARY_METRIC, rates: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`compare_pair` for every pair of :func:`analysis.compute.stats.comparison_pairs`
    (``rates``: :func:`analysis.compute.blowups.arm_rates` of the same runs, config and metric, when
    the caller has them)."""
    rates = blowups.arm_rates(runs, config, metric) if rates is None else rates
    rows = [compare_pair(runs, rates, x, y, config, metric) for x, y in comparison_pairs(runs)]
    return pd.DataFrame(rows, columns=list(COLUMNS))
