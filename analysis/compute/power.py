"""How many trials are needed: from a cell's observed spread of log perplexity, the trials per
arm a two-sample t-test needs to detect a stated difference in mean log perplexity.

δ = log(ratio): a difference of δ in mean log perplexity is a ratio ``exp(δ)`` of geometric
mean perplexities (δ = log 1.05: one arm 5% higher). Effect size d = δ / σ with σ the cell's
std (n−1) of log perplexity; trials per arm = the smallest n with power ≥ ``power`` at
two-sided ``alpha`` (``statsmodels.stats.power.TTestIndPower``, equal arms). σ from 3–7
trials is itself uncertain, so the trials needed at the upper end of σ's 95% χ² interval
(normal data) are given too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.compute.stats import PRIMARY_METRIC, metric_values

RATIOS = (1.05, 1.10, 1.5)  # differences in perplexity to detect, as ratios
ALPHA, POWER = 0.05, 0.8
MAX_TRIALS = 10**7


def power_of(d: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided two-sample t-test with ``n`` per arm at effect size ``d``."""
    from statsmodels.stats.power import TTestIndPower

    return float(TTestIndPower().power(effect_size=d, nobs1=n, alpha=alpha, ratio=1.0,
                                       alternative="two-sided"))


def trials_per_arm(delta: float, sigma: float, alpha: float = ALPHA,
                   power: float = POWER) -> float:
    """Smallest n per arm (≥ 2) reaching ``power``; 1 when σ = 0 (any difference shows in a
    single trial per arm), inf beyond :data:`MAX_TRIALS` or for δ = 0, NaN for unknown σ."""
    if not math.isfinite(sigma) or sigma < 0 or not math.isfinite(delta):
        return math.nan
    if sigma == 0:
        return 1.0 if delta else math.inf
    d = abs(delta) / sigma
    if d == 0 or power_of(d, MAX_TRIALS, alpha) < power:
        return math.inf
    lo, hi = 1, 2  # power(lo) < target <= power(hi), searched by doubling then bisection
    while power_of(d, hi, alpha) < power:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if power_of(d, mid, alpha) < power else (lo, mid)
    return float(max(hi, 2))


def sigma_upper(sigma: float, n: int, confidence: float = 0.95) -> float:
    """Upper end of the χ² CI of a std from ``n`` normal values: σ·√((n−1)/χ²_{(1−c)/2, n−1})."""
    if n < 2 or not math.isfinite(sigma):
        return math.nan
    return sigma * math.sqrt((n - 1) / sps.chi2.ppf((1 - confidence) / 2, n - 1))


def trials_needed(runs: pd.DataFrame, ratios: Sequence[float] = RATIOS, alpha: float = ALPHA,
                  power: float = POWER, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per cell with 2+ finite values: ``n``, ``std_log`` (σ of log ``metric``),
    ``std_log_ci_high``, and per ratio r: ``n_r`` (trials per arm at σ) and ``n_r_ci_high``
    (at the upper end of σ's CI)."""
    rows = []
    for cell in sorted(runs["cell"].unique()):
        values = metric_values(runs, cell, metric).to_numpy()
        values = np.log(values[values > 0])
        if values.size < 2:
            continue
        sigma = float(values.std(ddof=1)) if np.ptp(values) > 0 else 0.0  # no rounding noise
        upper = sigma_upper(sigma, values.size)
        row = {"cell": cell, "n": int(values.size), "std_log": sigma, "std_log_ci_high": upper}
        for ratio in ratios:
            row[f"n_{ratio:g}"] = trials_per_arm(math.log(ratio), sigma, alpha, power)
            row[f"n_{ratio:g}_ci_high"] = trials_per_arm(math.log(ratio), upper, alpha, power)
        rows.append(row)
    return pd.DataFrame(rows)
