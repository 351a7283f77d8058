"""Crossed designs: an ANOVA-style table of where the variance comes from, trial as a block.

A crossed design is a set of cells of one (model, dataset) whose trials share their seeds
trial by trial (:func:`analysis.compute.stats.paired_trials`) and whose ``optim`` and/or ``variant``
levels are fully crossed: ``experiments=variance_sources_crossed`` (optimizer × quantization,
2 trials) or the default study (optimizer, 7 trials). The model is
``y ~ C(optim) * C(variant) + C(trial)`` (factors with one level left out; the trial block
only when seeds change with the trial), fitted by ``statsmodels`` OLS, with type-2 sums of
squares (``anova_lm(typ=2)``). Only complete blocks (trials finished with a finite value in
every cell) are used, so the design stays balanced.

Per term: sum of squares, df, F, p, ``eta2`` = SS / total SS (the term's share of the
variance), ``partial_eta2`` = SS / (SS + SS_residual) with a 95% CI by inverting the
noncentral F distribution for λ and converting λ → λ / (λ + df_residual), the convention of R's
``effectsize`` package: at λ = F·df it gives back the point estimate, which the CI contains.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from analysis.compute.stats import PRIMARY_METRIC, metric_values, paired_trials
from analysis.load import FINISHED
from repeatability.config.run import TRAINING_SEED_SOURCES
from repeatability.records import metrics as registry
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

FACTORS = ("optim", "variant")
RESPONSES: tuple[tuple[str, str, bool], ...] = registry.responses("anova")  # repeatability.records.metrics
BLOCK_LABEL = "trial (block: all seeds)"
CONSTANT_RTOL = 1e-12  # a response whose range is below this (relative) does not vary
TABLE_COLUMNS = ("term", "sum_sq", "df", "F", "p", "eta2", "partial_eta2",
                 "partial_eta2_ci_low", "partial_eta2_ci_high")


@dataclass(frozen=True)
class Design:
    """A crossed design found in a study: its cells, the factors with 2+ levels, and trials."""

    group: str
    cells: tuple[str, ...]
    factors: tuple[str, ...]
    trials: tuple[int, ...]
    blocked: bool  # seeds change with the trial: trial is a block term


def _clusters(runs: pd.DataFrame, cells: list[str]) -> list[list[str]]:
    """Groups of cells whose trials are seed-matched with each other."""
    left, out = list(cells), []
    while left:
        first = left.pop(0)
        mates = [c for c in left if paired_trials(runs, first, c)]
        left = [c for c in left if c not in mates]
        out.append([first, *mates])
    return out


def _complete_blocks(runs: pd.DataFrame, cells: list[str], metric: str) -> list[int]:
    common = None
    for cell in cells:
        trials = set(metric_values(runs, cell, metric).index)
        common = trials if common is None else common & trials
    return sorted(common or ())


def _design(runs: pd.DataFrame, group: str, cells: list[str]) -> Design | None:
    rows = runs[runs["cell"].isin(cells)].drop_duplicates("cell")
    factors = tuple(f for f in FACTORS if rows[f].nunique() > 1)
    combos = set(map(tuple, rows[list(factors)].astype(str).to_numpy())) if factors else set()
    full = set(product(*(sorted(rows[f].astype(str).unique()) for f in factors)))
    if not factors or len(combos) != len(rows) or combos != full:
        log.info("%s: cells %s are not a full crossing; no ANOVA", group, cells)
        return None
    trials = _complete_blocks(runs, cells, PRIMARY_METRIC)
    if len(trials) < 2:
        return None
    done = runs[runs["cell"].isin(cells) & runs["status"].isin(FINISHED)]
    blocked = any(done.groupby("cell")[getattr(S.seeds, s)].nunique().gt(1).any()
                  for s in TRAINING_SEED_SOURCES if getattr(S.seeds, s) in done)
    return Design(group, tuple(cells), factors, tuple(trials), blocked)


def crossed_designs(runs: pd.DataFrame) -> list[Design]:
    """Every crossed design of the study (see the module doc), per (model, dataset)."""
    out = []
    for (model, dataset), group in runs.groupby(["model", "dataset"], sort=True):
        for cluster in _clusters(runs, sorted(group["cell"].unique())):
            design = _design(runs, f"{model}__{dataset}", cluster) if len(cluster) > 1 else None
            if design:
                out.append(design)
    return out


def design_frame(runs: pd.DataFrame, design: Design, metric: str, log_scale: bool) -> pd.DataFrame:
    """Long frame ``y``, factors, ``trial`` for the design's complete blocks of ``metric``."""
    trials = [t for t in _complete_blocks(runs, list(design.cells), metric) if t in design.trials]
    rows = []
    for cell in design.cells:
        values = metric_values(runs, cell, metric)
        first = runs[runs["cell"] == cell].iloc[0]
        for trial in trials:
            y = float(values.loc[trial])
            rows.append({"y": math.log(y) if log_scale else y, "trial": int(trial),
                         **{f: str(first[f]) for f in design.factors}})
    frame = pd.DataFrame(rows)
    return frame[frame["y"].map(math.isfinite)] if len(frame) else frame


def noncentrality_ci(f: float, df1: float, df2: float,
                     confidence: float = 0.95) -> tuple[float, float]:
    """CI of the noncentrality λ of F(df1, df2): the λ at which the observed ``f`` is the
    upper and the lower quantile (0 when even λ = 0 puts it beyond). NaN for a non-finite F."""
    if not (math.isfinite(f) and df1 > 0 and df2 > 0):
        return math.nan, math.nan

    def lam(quantile: float) -> float:
        cdf = lambda x: sps.ncf.cdf(f, df1, df2, x) - quantile  # decreasing in λ
        if sps.f.cdf(f, df1, df2) < quantile:
            return 0.0
        upper = max(10.0, 2 * f * df1)
        while cdf(upper) > 0 and upper < 1e9:  # NaN (ncf out of range) stops the loop
            upper *= 4
        if not cdf(upper) < 0:  # F too large for ncf (e.g. a perfect fit): no bound
            return math.nan
        return float(optimize.brentq(cdf, 0.0, upper, xtol=1e-10))

    return lam((1 + confidence) / 2), lam((1 - confidence) / 2)


def partial_eta2_ci(f: float, df1: float, df2: float,
                    confidence: float = 0.95) -> tuple[float, float]:
    """CI of partial η² = λ / (λ + df2) over :func:`noncentrality_ci`'s bounds of λ."""
    lo, hi = noncentrality_ci(f, df1, df2, confidence)
    return lo / (lo + df2), hi / (hi + df2)


def _label(term: str) -> str:
    if term == "Residual":
        return "residual"
    parts = [p.removeprefix("C(").removesuffix(")") for p in term.split(":")]
    return BLOCK_LABEL if parts == ["trial"] else " × ".join(parts)


def _term_row(term: str, row: pd.Series, ss_total: float, ss_res: float, df_resid: float,
              exact: bool, confidence: float) -> dict[str, Any]:
    """One row of :func:`anova_table` from statsmodels' row of ``term``."""
    ss, df, f, p = (float(row[k]) for k in ("sum_sq", "df", "F", "PR(>F)"))
    ss = 0.0 if ss <= CONSTANT_RTOL * ss_total else ss  # rounding noise of an absent effect
    if term == "Residual":
        return {"term": "residual", "sum_sq": ss, "df": df, "F": math.nan, "p": math.nan,
                "eta2": ss / ss_total if ss_total else math.nan, "partial_eta2": math.nan,
                "partial_eta2_ci_low": math.nan, "partial_eta2_ci_high": math.nan}
    if ss == 0:
        f, p = 0.0, 1.0
    elif exact:  # residual 0: a real effect has F = inf
        f, p = math.inf, 0.0
    low, high = partial_eta2_ci(f, df, df_resid, confidence)
    return {"term": _label(term), "sum_sq": ss, "df": df, "F": f, "p": p,
            "eta2": ss / ss_total if ss_total else math.nan,
            "partial_eta2": ss / (ss + ss_res) if ss + ss_res > 0 else math.nan,
            "partial_eta2_ci_low": low, "partial_eta2_ci_high": high}


def anova_table(frame: pd.DataFrame, factors: tuple[str, ...] | list[str],
                block: bool = True, confidence: float = 0.95) -> pd.DataFrame:
    """Type-2 ANOVA of ``frame.y`` on the crossed ``factors`` (+ ``C(trial)`` when ``block``),
    with the columns of :data:`TABLE_COLUMNS` and a last row ``total``.

    Raises:
        ValueError: ``y`` does not vary (nothing to decompose), or no residual degree of freedom
            is left (too few observations).
    """
    y = frame["y"].to_numpy(dtype=float) if len(frame) else np.array([])
    if y.size == 0 or np.ptp(y) <= CONSTANT_RTOL * np.abs(y).max():
        raise ValueError("the response does not vary: nothing to decompose")
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    formula = "y ~ " + " * ".join(f"C({f})" for f in factors) + (" + C(trial)" if block else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a perfect fit (identical trials) divides by zero
        fit = smf.ols(formula, data=frame).fit()
        if fit.df_resid < 1:
            raise ValueError(f"{len(frame)} observations leave no residual df for {formula}")
        table = anova_lm(fit, typ=2)
    ss_total = float(((frame["y"] - frame["y"].mean()) ** 2).sum())
    ss_res = float(table.loc["Residual", "sum_sq"])
    exact = ss_res <= CONSTANT_RTOL * ss_total  # a perfect fit: F is rounding noise / 0
    ss_res = 0.0 if exact else ss_res
    rows = [_term_row(str(term), row, ss_total, ss_res, fit.df_resid, exact, confidence)
            for term, row in table.iterrows()]
    rows.append({"term": "total", "sum_sq": ss_total, "df": float(len(frame) - 1),
                 **dict.fromkeys(TABLE_COLUMNS[3:], math.nan),
                 "eta2": 1.0 if ss_total else math.nan})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def crossed_anova(runs: pd.DataFrame) -> list[tuple[Design, str, pd.DataFrame]]:
    """(design, response label, ANOVA table) for every crossed design and response that leaves
    a residual degree of freedom."""
    out = []
    for design in crossed_designs(runs):
        for label, metric, log_scale in RESPONSES:
            frame = design_frame(runs, design, metric, log_scale)
            try:
                out.append((design, label, anova_table(frame, design.factors, design.blocked)))
            except (ValueError, KeyError) as exc:
                log.info("%s, %s: no ANOVA: %s", design.group, label, exc)
    return out
