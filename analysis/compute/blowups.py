"""Blow-ups as an outcome of their own: how often an arm's runs blow up, with an exact CI,
Fisher's exact test between arms, and the clusters an arm's perplexities split into.

A finished run (complete or diverged) *blew up* when it diverged (loss NaN/inf, or its
perplexity overflowed) or its primary perplexity exceeds k × the reference of its
(model, dataset). The reference is

- the base model's perplexity recorded by the runs (``metrics.base_perplexity_token_weighted``,
  the median over the group's finished runs that recorded it), or, when no run recorded one
  (studies imported from published tables),
- the pooled median perplexity of every finished run of that (model, dataset) across arms.

The paper's 8-bit perplexities (12 to 233,812 in one arm) are a mixture of ordinary runs and
blow-ups: a mean or t-test of such an arm says little, a blow-up rate says what happened.
:func:`study_cells` and :func:`pooled_counts` put a study's cells and rates next to others'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.compute.stats import PRIMARY_METRIC, describe, metric_values
from analysis.compute.tables import arm_label
from analysis.config import DEFAULT, AnalysisConfig
from analysis.load import FINISHED, Study, column, is_imported, optim_bits
from repeatability.records.summary import COLUMNS as S

BASE_METRIC = S.metrics.base_perplexity_token_weighted
REFERENCE_BASE = "base-model perplexity recorded by the runs"
REFERENCE_POOLED = "pooled median perplexity of the finished runs across arms (no base recorded)"
REFERENCE_COLUMNS = ("model", "dataset", "reference", "value", "n_values", "min", "max",
                     "threshold")
RATE_COLUMNS = ("cell", "model", "dataset", "optim", "variant", "n", "blowups", "rate", "ci_low",
                "ci_high", "n_clusters", "clusters")


def _numbers(rows: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(column(rows, key), errors="coerce").astype(float)


def references(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT,
               metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per (model, dataset): which reference (:data:`REFERENCE_BASE` or
    :data:`REFERENCE_POOLED`), its value, how many runs it comes from, the range of those
    values (base perplexities should all be equal), and ``threshold`` = k × value."""
    rows = []
    done = runs[runs["status"].isin(FINISHED)]
    for (model, dataset), group in done.groupby(["model", "dataset"], sort=True):
        base = _numbers(group, BASE_METRIC)
        base = base[np.isfinite(base) & (base > 0)]
        kind, values = REFERENCE_BASE, base
        if base.empty:
            ppl = _numbers(group, metric)
            kind, values = REFERENCE_POOLED, ppl[np.isfinite(ppl)]
        value = float(values.median()) if len(values) else math.nan
        rows.append({"model": model, "dataset": dataset, "reference": kind, "value": value,
                     "n_values": len(values), "min": float(values.min()) if len(values) else math.nan,
                     "max": float(values.max()) if len(values) else math.nan,
                     "threshold": config.blowup_k * value})
    return pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))


def run_outcomes(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT,
                 metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per finished run: its perplexity, the threshold of its (model, dataset),
    ``blowup`` and ``known`` (False only for a complete run without a usable perplexity,
    which is neither counted as a blow-up nor as a normal run)."""
    done = runs[runs["status"].isin(FINISHED)]
    refs = references(runs, config, metric).set_index(["model", "dataset"])["threshold"]
    out = done[["cell", "model", "dataset", "optim", "variant", "trial", "status"]].copy()
    out["perplexity"] = _numbers(done, metric).to_numpy()
    out["threshold"] = [refs.get((m, d), math.nan) for m, d in zip(done["model"], done["dataset"])]
    ppl, limit = out["perplexity"], out["threshold"]
    above = (ppl == math.inf) | (np.isfinite(ppl) & (ppl > limit))
    out["blowup"] = (out["status"] == "diverged") | above
    out["known"] = out["blowup"] | (np.isfinite(ppl) & np.isfinite(limit))
    return out.reset_index(drop=True)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) CI of a binomial proportion k/n; (NaN, NaN) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def fisher_p(blowups_x: int, n_x: int, blowups_y: int, n_y: int) -> float:
    """Two-sided Fisher's exact test of equal blow-up rates; NaN when an arm has no run."""
    if n_x == 0 or n_y == 0:
        return math.nan
    table = [[blowups_x, n_x - blowups_x], [blowups_y, n_y - blowups_y]]
    return float(sps.fisher_exact(table, alternative="two-sided").pvalue)


def clusters(values: Sequence[float], gap_decades: float = 1.0) -> list[list[float]]:
    """Finite positive values, sorted, cut wherever two neighbours are more than
    ``gap_decades`` apart on the log10 scale (1.0: a factor of more than 10)."""
    x = np.sort(np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=float))
    if x.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(np.log10(x)) > gap_decades) + 1
    return [list(map(float, part)) for part in np.split(x, cuts)]


def arm_rates(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT,
              metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per cell: runs judged (``n``), blow-ups, rate, Clopper–Pearson 95% CI, and the
    clusters of its perplexities (:func:`clusters`: ``n_clusters``, and the values of each)."""
    outcomes = run_outcomes(runs, config, metric)
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        mine = outcomes[(outcomes["cell"] == cell) & outcomes["known"]]
        n, k = len(mine), int(mine["blowup"].sum())
        low, high = clopper_pearson(k, n)
        parts = clusters(mine["perplexity"], config.gap_decades)
        first = group.iloc[0]
        rows.append({"cell": cell, "model": first["model"], "dataset": first["dataset"],
                     "optim": first["optim"], "variant": first["variant"], "n": n, "blowups": k,
                     "rate": k / n if n else math.nan, "ci_low": low, "ci_high": high,
                     "n_clusters": len(parts), "clusters": parts})
    return pd.DataFrame(rows, columns=list(RATE_COLUMNS))


def _source(rows: pd.DataFrame) -> str:
    imported = rows[is_imported(rows)]
    if imported.empty:
        return "run by this harness"
    return "imported: " + "; ".join(sorted(column(imported, S.imported.source).astype(str).unique()))


def study_cells(study: Study, rates: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of ``study``: where its numbers come from, perplexity summary and
    blow-up rate with CI (``rates``, ``refs``: the study's own :func:`arm_rates`
    and :func:`references`)."""
    rates, refs = rates.set_index("cell"), refs.set_index(["model", "dataset"])
    rows = []
    for cell, group in study.runs.groupby("cell", sort=True):
        d = describe(metric_values(study.runs, str(cell)).to_numpy())
        r, first = rates.loc[cell], group.iloc[0]
        ref = refs["value"].get((first["model"], first["dataset"]))
        rows.append({"study": study.name, "source": _source(group), "cell": cell,
                     "arm": arm_label(first), "n": int(r["n"]), "median": d["median"],
                     "min": d["min"], "max": d["max"], "blowups": int(r["blowups"]),
                     "blowup_rate": r["rate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "reference": ref})
    return pd.DataFrame(rows)


def pooled_counts(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, study) of :func:`study_cells`' rows: blow-ups and runs pooled over the
    study's models and datasets, with the exact 95% CI; arms with fewer requested optimizer
    bits first, studies in the order of ``cells``."""
    pooled = cells.groupby(["arm", "study"], sort=True)[["blowups", "n"]].sum().reset_index()
    cis = [clopper_pearson(int(k), int(n)) for k, n in zip(pooled["blowups"], pooled["n"])]
    pooled["ci_low"], pooled["ci_high"] = [c[0] for c in cis], [c[1] for c in cis]
    arms = sorted(pooled["arm"].unique())
    bits = dict(zip(arms, optim_bits(pd.DataFrame({"optim": arms})).fillna(float("inf"))))
    studies = {name: i for i, name in enumerate(dict.fromkeys(cells["study"]))}
    order = pooled.assign(bits=pooled["arm"].map(bits), position=pooled["study"].map(studies))
    return pooled.loc[order.sort_values(["bits", "arm", "position"]).index].reset_index(drop=True)
