"""Per-cell statistics of a metric across trials, and comparisons between two cells.

Perplexities across trials are heavy-tailed (the paper's 8-bit Llama2-7B column spans 12 to
233,813), so next to mean/std/CV every summary carries the median, the geometric mean and the
max/min spread, and comparisons are rank-based (Mann-Whitney U, Wilcoxon) or median-centred
(Brown-Forsythe), none of which assumes normality.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.load import FINISHED, column, finite, optim_bits
from repeatability.config.run import TRAINING_SEED_SOURCES
from repeatability.records import metrics as registry
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

PRIMARY_METRIC = registry.PRIMARY.key  # repeatability.records.metrics
STATUS_COUNTS = ("complete", "diverged", "failed", "incomplete", "unreadable", "corrupted")


DESCRIBE_KEYS = ("n", "mean", "std", "cv", "median", "q1", "q3", "iqr", "min", "max", "spread",
                 "gmean", "gstd")


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean, std (n-1), CV, median, quartiles and IQR (linear interpolation), min, max,
    spread = max/min, and on the log scale the geometric mean and geometric std (a factor).

    Non-finite values must be removed first. The log-scale statistics and the spread need
    positive values and are NaN otherwise; everything but ``n`` is NaN for an empty input.
    """
    x = np.asarray(values, dtype=float)
    out: dict[str, float] = dict.fromkeys(DESCRIBE_KEYS, math.nan) | {"n": int(x.size)}
    if x.size == 0:
        return out
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    mean = float(x.mean())
    q1, median, q3 = (float(q) for q in np.percentile(x, [25, 50, 75]))
    out |= {"mean": mean, "std": std, "cv": std / mean if mean else math.nan, "median": median,
            "q1": q1, "q3": q3, "iqr": q3 - q1, "min": float(x.min()), "max": float(x.max())}
    if (x > 0).all():
        logs = np.log(x)
        out |= {"spread": float(x.max() / x.min()), "gmean": float(np.exp(logs.mean())),
                "gstd": float(np.exp(logs.std(ddof=1))) if x.size > 1 else math.nan}
    return out


def _gmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(np.log(x).mean(axis=axis))


def _std(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.std(x, ddof=1, axis=axis)


BOOTSTRAP_STATISTICS = {"mean": np.mean, "std": _std, "median": np.median, "gmean": _gmean}


def bootstrap_ci(values: Sequence[float], statistic: str = "mean", confidence: float = 0.95,
                 n_resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI (``scipy.stats.bootstrap``) of ``mean``, ``std`` (n-1),
    ``median`` or ``gmean`` (geometric mean).

    Percentile rather than BCa: with 7 trials and ties BCa's acceleration is often undefined.
    Fewer than 3 values → (NaN, NaN); all values equal → the statistic twice (a point).
    Same seed, same CI. With 7 trials the interval is rough: read it as a range, not a test.
    """
    x = np.asarray(values, dtype=float)
    func = BOOTSTRAP_STATISTICS[statistic]
    if x.size < 3 or (statistic == "gmean" and not (x > 0).all()):
        return math.nan, math.nan
    if np.all(x == x[0]):
        point = float(func(x))
        return point, point
    res = sps.bootstrap((x,), func, n_resamples=n_resamples, confidence_level=confidence,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def metric_values(runs: pd.DataFrame, cell: str, metric: str = PRIMARY_METRIC) -> pd.Series:
    """Finite values of ``metric`` of the cell's finished (complete or diverged) runs, by trial."""
    rows = runs[(runs["cell"] == cell) & runs["status"].isin(FINISHED)]
    values = pd.to_numeric(column(rows, metric), errors="coerce").astype(float)
    values.index = rows["trial"].to_numpy()
    return finite(values).sort_index()


def cell_stats(runs: pd.DataFrame, metric: str = PRIMARY_METRIC, seed: int = 0) -> pd.DataFrame:
    """One row per cell: run counts by status, :func:`describe` of ``metric`` and bootstrap
    95% CIs of the mean, the std and the geometric mean.

    The statistics use the finite values of complete *and* diverged runs (a diverged run is an
    outcome of fine-tuning, and dropping it would understate the spread); ``n_nonfinite``
    counts finished runs whose value is NaN/inf and so could not be used.
    """
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        values = metric_values(runs, str(cell), metric).to_numpy()
        counts = {f"n_{s}": int((group["status"] == s).sum()) for s in STATUS_COUNTS}
        cis = {}
        for stat in ("mean", "std", "gmean"):
            cis[f"{stat}_ci_low"], cis[f"{stat}_ci_high"] = bootstrap_ci(values, stat, seed=seed)
        first = group.iloc[0]
        rows.append({"cell": cell, "model": first["model"], "dataset": first["dataset"],
                     "optim": first["optim"], "variant": first["variant"], "metric": metric,
                     "n_runs": len(group), **counts,
                     "n_nonfinite": counts["n_complete"] + counts["n_diverged"] - len(values),
                     **describe(values), **cis})
    return pd.DataFrame(rows)


def stats_table(runs: pd.DataFrame, metrics: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """:func:`cell_stats` of several metrics stacked (one row per cell and metric)."""
    return pd.concat([cell_stats(runs, m, seed) for m in metrics], ignore_index=True)


def paired_trials(runs: pd.DataFrame, cell_a: str, cell_b: str) -> list[int]:
    """Trials present in both cells whose seeds (lora_init, data_order, dropout) are equal.

    The arms are a matched design only if *every* common trial matches; otherwise ``[]``.
    """
    def seeds(cell: str) -> dict[int, tuple]:
        rows = runs[(runs["cell"] == cell) & runs["status"].isin(FINISHED)]
        cols = [column(rows, getattr(S.seeds, s)) for s in TRAINING_SEED_SOURCES]
        return {int(t): tuple(c.loc[i] for c in cols) for i, t in rows["trial"].items()}

    a, b = seeds(cell_a), seeds(cell_b)
    common = sorted(set(a) & set(b))
    matched = [t for t in common if a[t] == b[t] and None not in a[t]
               and not any(isinstance(v, float) and math.isnan(v) for v in a[t])]
    return matched if common and matched == common else []


def _wilcoxon(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Signed-rank test on paired differences; all-zero differences → p = NaN with a note."""
    diff = x - y
    out: dict[str, Any] = {"n_pairs": int(diff.size), "median_paired_diff": float(np.median(diff))
                           if diff.size else math.nan, "wilcoxon_stat": math.nan,
                           "wilcoxon_p": math.nan, "n_pairs_positive": int((diff > 0).sum()),
                           "n_pairs_zero": int((diff == 0).sum())}
    if diff.size and np.all(diff == 0):
        out["note"] = "all paired differences are zero"
    elif diff.size >= 2:
        res = sps.wilcoxon(x, y)
        out |= {"wilcoxon_stat": float(res.statistic), "wilcoxon_p": float(res.pvalue)}
    return out


def compare_values(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Unpaired comparison of two samples (X = first arm, Y = second).

    ``p_x_gt_y`` is the common-language effect size P(X > Y) + ½·P(X = Y) = U_X / (n_x·n_y);
    ``rank_biserial`` = 2·P − 1 (+1: every X above every Y). ``bf_*`` is Brown-Forsythe
    (Levene, median-centred) on the raw values and, ``bf_log_*``, on log values (spread as a
    ratio, the natural scale of perplexity), computed with 3+ values per arm only.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out: dict[str, Any] = {"n_x": int(x.size), "n_y": int(y.size)}
    keys = ("mwu_u", "mwu_p", "p_x_gt_y", "rank_biserial", "bf_stat", "bf_p", "bf_log_stat",
            "bf_log_p")
    out |= dict.fromkeys(keys, math.nan)
    if x.size == 0 or y.size == 0:
        return out
    mwu = sps.mannwhitneyu(x, y, alternative="two-sided")
    p = float(mwu.statistic) / (x.size * y.size)
    out |= {"mwu_u": float(mwu.statistic), "mwu_p": float(mwu.pvalue), "p_x_gt_y": p,
            "rank_biserial": 2 * p - 1}
    # 3+ per arm: with 2 values both lie at the same distance from their median, the
    # within-arm spread of deviations is 0 and the statistic is infinite whatever the data
    if x.size >= 3 and y.size >= 3 and np.ptp(np.concatenate([x, y])) > 0:
        bf = sps.levene(x, y, center="median")
        out |= {"bf_stat": float(bf.statistic), "bf_p": float(bf.pvalue)}
        if (x > 0).all() and (y > 0).all():
            bfl = sps.levene(np.log(x), np.log(y), center="median")
            out |= {"bf_log_stat": float(bfl.statistic), "bf_log_p": float(bfl.pvalue)}
    return out


def _prob_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + ½·P(X = Y) over every (x, y) combination, along the last axis of each."""
    return _score(x[..., :, None] - y[..., None, :]).mean(axis=(-2, -1))


def _prob_greater_paired(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """P(X > Y) of each row of resampled pair indices ``idx``, weighted as the point estimate
    is: 1/n for comparisons within a pair, the rest for comparisons between *different* trials.

    Without the split, a resample's duplicated trials would pass for different ones and
    inflate the within-pair share (a seed-matched pair is correlated), biasing the CI.
    """
    n = idx.shape[1]
    score = _score(x[idx][:, :, None] - y[idx][:, None, :])
    within = score[:, np.arange(n), np.arange(n)].mean(axis=1)
    other = idx[:, :, None] != idx[:, None, :]
    count = other.sum(axis=(1, 2))
    between = np.where(count > 0, (score * other).sum(axis=(1, 2)) / np.maximum(count, 1), within)
    return within / n + (1 - 1 / n) * between


def _score(diff: np.ndarray) -> np.ndarray:
    """1 where X > Y, ½ where X = Y, 0 otherwise."""
    return (diff > 0) + 0.5 * (diff == 0)


def p_x_gt_y_ci(x: Sequence[float], y: Sequence[float], paired: bool = False,
                confidence: float = 0.95, n_resamples: int = 9999,
                seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of P(X > Y) (the ``p_x_gt_y`` of :func:`compare_values`).

    ``paired``: ``x[i]`` and ``y[i]`` are one trial's two arms and whole pairs are resampled
    (the design of seed-matched arms; see :func:`_prob_greater_paired`); otherwise each arm is
    resampled on its own. Fewer than 3 values in an arm → (NaN, NaN). Same seed, same CI.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if min(x.size, y.size) < 3 or (paired and x.size != y.size):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ix = rng.integers(0, x.size, size=(n_resamples, x.size))
    if paired:
        values = _prob_greater_paired(x, y, ix)
    else:
        values = _prob_greater(x[ix], y[rng.integers(0, y.size, size=(n_resamples, y.size))])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def compare_cells(runs: pd.DataFrame, cell_x: str, cell_y: str,
                  metric: str = PRIMARY_METRIC) -> dict[str, Any]:
    """Compare ``metric`` between two cells: unpaired tests, plus Wilcoxon when seed-matched.

    Pairing (by trial number) is used only when :func:`paired_trials` finds the two arms
    seed-matched; ``paired`` says which design the numbers come from.
    """
    x, y = metric_values(runs, cell_x, metric), metric_values(runs, cell_y, metric)
    sx, sy = describe(x.to_numpy()), describe(y.to_numpy())
    out: dict[str, Any] = {"x": cell_x, "y": cell_y, "metric": metric,
                           "median_x": sx["median"], "median_y": sy["median"],
                           "spread_x": sx["spread"], "spread_y": sy["spread"],
                           "cv_x": sx["cv"], "cv_y": sy["cv"],
                           "std_ratio": sx["std"] / sy["std"] if sy["std"] else math.nan,
                           **compare_values(x.to_numpy(), y.to_numpy())}
    trials = [t for t in paired_trials(runs, cell_x, cell_y) if t in x.index and t in y.index]
    out["paired"] = bool(trials)
    out["paired_trials"] = trials
    out |= _wilcoxon(x.loc[trials].to_numpy(), y.loc[trials].to_numpy()) if trials else {}
    xs, ys = (x.loc[trials], y.loc[trials]) if trials else (x, y)
    out["p_x_gt_y_ci_low"], out["p_x_gt_y_ci_high"] = p_x_gt_y_ci(
        xs.to_numpy(), ys.to_numpy(), paired=bool(trials))
    return out


def _bits(runs: pd.DataFrame, cell: str) -> float:
    bits = optim_bits(runs[runs["cell"] == cell])
    return float(bits.min()) if bits.notna().any() else math.inf


def comparison_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """Pairs of cells that differ only in the optimizer (same model, dataset, variant).

    Within a pair the lower requested ``optim_bits`` comes first (X = 8-bit, Y = 32-bit, as
    the paper's question: is the 8-bit arm worse / more spread?), then by name.
    """
    pairs = []
    for _, group in runs.groupby(["model", "dataset", "variant"], sort=True):
        cells = sorted(group["cell"].unique(), key=lambda c: (_bits(runs, c), c))
        pairs += [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:]]
    return pairs


def compare_all(runs: pd.DataFrame, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """:func:`compare_cells` for every pair of :func:`comparison_pairs`, one row each."""
    rows = [compare_cells(runs, a, b, metric) for a, b in comparison_pairs(runs)]
    return pd.DataFrame(rows)
