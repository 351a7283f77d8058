"""Where does the variance come from? One-factor-at-a-time (OFAT) components.

A study such as ``experiments=variance_sources`` has, per (model, dataset, optim), cells in
which exactly one seed source follows the trial and every other one is fixed, plus a baseline
cell in which every source is fixed. Which source a cell varies is read from its runs'
``seeds.rules`` (rule ``trial``, or ``entropy``: a fresh seed per run); runs recorded without
rules fall back to the seed values that differ. Under the additive model
``y = μ + a_source + ε_floor``:

- ``variance`` of a cell = the sample variance (n−1) of ``y`` over its finished trials;
- the baseline cell's variance is the *floor* (hardware/kernel non-determinism; 0 on CPU);
- the ``component`` of a source = max(its cell's variance − floor, 0); the floor is a component
  of its own; ``share`` = component / sum of components;
- 95% CIs: a std's is the χ² interval of a normal sample's standard deviation (n−1 df), the one
  every report uses for a spread; a share's is a percentile bootstrap (``scipy.stats.bootstrap``)
  resampling each cell's trials independently, so it carries every cell's sampling error (with 3
  trials per cell a resample has 10 distinct values: read it as a rough range). The adapter ΔW's
  std (a trace over many correlated elements, not one normal variable) keeps the bootstrap interval.
- "moves it most": each source's variance against the next largest one's, an F test (variance
  ratio on (n₁−1, n₂−1) df, one-sided ``f_p``); the words claim "most" only when it is below α.

``y`` is log perplexity (its std is the geometric std's log: perplexity varies by a factor
exp(std) between trials), perplexity, final losses, and the adapter update ΔW, whose
"variance" is tr(Cov(ΔW)) / mean ||ΔW||²_F computed from pairwise distances
(Σ_ab ||ΔW_a − ΔW_b||² / (2n(n−1)), the same formula as a scalar's sample variance).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.compute import adapter_distance, anova
from analysis.compute.stats import metric_values
from analysis.compute.verdict import varied_sources
from analysis.load import FINISHED
from repeatability.records import metrics as registry

log = logging.getLogger(__name__)

BASELINE = "none (floor)"  # the source label of the all-fixed cell
__all__ = ["BASELINE", "OFAT_METRICS", "WEIGHTS", "VarianceSources", "components", "decompose", "ofat_design",
           "pair_variance", "scalar_d2", "source_results", "varied_sources"]
# (label, summary key, on the log scale?): the metrics declared for ``ofat`` (repeatability.records.metrics)
OFAT_METRICS: tuple[tuple[str, str, bool], ...] = registry.responses("ofat")
WEIGHTS = "adapter ΔW (relative)"
_BATCH_ELEMENTS = 4_000_000  # resampled D² elements held at once by the bootstrap
TABLE_COLUMNS = ("metric", "group", "source", "cell", "n", "mean", "variance", "std",
                 "std_ci_low", "std_ci_high", "component", "share", "share_ci_low",
                 "share_ci_high", "f_vs_next", "f_p")


def ofat_design(runs: pd.DataFrame) -> pd.DataFrame:
    """Cells that vary at most one seed source, by ``group`` (model__dataset__optim):
    ``source`` is the varied one or :data:`BASELINE`. Groups without a varied cell are dropped;
    a second cell for the same source in a group is dropped with a warning."""
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        done = group[group["status"].isin(FINISHED)]
        varied = varied_sources(done) if len(done) else ["?", "?"]
        if len(varied) <= 1:
            first = group.iloc[0]
            rows.append({"group": f"{first['model']}__{first['dataset']}__{first['optim']}",
                         "cell": str(cell), "source": varied[0] if varied else BASELINE})
    frame = pd.DataFrame(rows, columns=["group", "cell", "source"])
    duplicated = frame.duplicated(["group", "source"])
    for _, row in frame[duplicated].iterrows():
        log.warning("%s: a second cell varying %s in %s; left out of the decomposition",
                    row["cell"], row["source"], row["group"])
    frame = frame[~duplicated]
    varied = frame.groupby("group")["source"].transform(lambda s: bool((s != BASELINE).any()))
    return frame[varied.astype(bool)].reset_index(drop=True)


def scalar_d2(values: np.ndarray) -> np.ndarray:
    """Pairwise squared differences (y_a − y_b)² of a cell's values."""
    y = np.asarray(values, dtype=float)
    return (y[:, None] - y[None, :]) ** 2


def pair_variance(d2: np.ndarray) -> np.ndarray:
    """Σ_ab D²[..., a, b] / (2n(n−1)): the sample variance (n−1) of the points behind the
    pairwise squared distances (a trace of the covariance for vectors); batched over leading
    axes."""
    n = d2.shape[-1]
    return d2.sum(axis=(-2, -1)) / (2 * n * (n - 1))


def _components(variances: np.ndarray, floor: int | None) -> np.ndarray:
    """Components (rows = sources) from variances; the floor row stays its own variance."""
    if floor is None:
        return variances.copy()
    out = np.maximum(variances - variances[floor], 0.0)
    out[floor] = variances[floor]
    return out


def _shares(comps: np.ndarray) -> np.ndarray:
    total = comps.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, comps / np.where(total > 0, total, 1.0), np.nan)


def _bootstrap(d2s: list[np.ndarray], floor: int | None, confidence: float, n_resamples: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CIs (rows low/high) of every source's std and share: scipy.stats.bootstrap
    over each cell's trial indices, independently per cell (NaN shares, where every resampled
    component is 0, are left out of the percentiles)."""
    def statistic(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        var = np.stack([pair_variance(d2[i[..., :, None], i[..., None, :]])
                        for d2, i in zip(d2s, idx)])
        return np.concatenate([np.sqrt(var), _shares(_components(var, floor))])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(tuple(np.arange(len(d)) for d in d2s), statistic,
                            n_resamples=n_resamples, confidence_level=confidence,
                            method="percentile", vectorized=True, paired=False,
                            batch=max(1, _BATCH_ELEMENTS // sum(len(d) ** 2 for d in d2s)),
                            rng=np.random.default_rng(seed))
        alpha = (1 - confidence) / 2 * 100
        ci = np.nanpercentile(res.bootstrap_distribution, [alpha, 100 - alpha], axis=-1)
    k = len(d2s)
    return ci[:, :k], ci[:, k:]


def chi2_std_interval(variance: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The χ² interval of a standard deviation from a sample variance of ``n`` values (n−1 df)."""
    df = n - 1
    if df < 1 or not math.isfinite(variance):
        return math.nan, math.nan
    alpha = 1 - confidence
    return (math.sqrt(df * variance / sps.chi2.ppf(1 - alpha / 2, df)),
            math.sqrt(df * variance / sps.chi2.ppf(alpha / 2, df)))


def f_vs_next(table: pd.DataFrame, baseline: str | None = BASELINE) -> pd.DataFrame:
    """Each varied source's variance / the next largest varied source's, with the one-sided p of
    that F on (n−1, n_next−1) df (``scipy.stats.f``); NaN for the smallest and for the floor."""
    out = table.assign(f_vs_next=math.nan, f_p=math.nan)
    varied = out[(out["source"] != baseline) & out["variance"].notna()].sort_values("variance", ascending=False)
    for (i, row), (_, nxt) in zip(varied.iloc[:-1].iterrows(), varied.iloc[1:].iterrows()):
        if nxt["variance"] > 0:
            f = row["variance"] / nxt["variance"]
            out.loc[i, ["f_vs_next", "f_p"]] = f, float(sps.f.sf(f, row["n"] - 1, nxt["n"] - 1))
    return out


def components(d2s: Mapping[str, np.ndarray], baseline: str | None = BASELINE,
               confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
               chi2_std: bool = True) -> pd.DataFrame:
    """One row per source: ``n``, ``variance``, ``std`` (+ CI), ``component``, ``share`` (+ CI).

    ``d2s`` maps a source to its cell's pairwise squared distances (:func:`scalar_d2` for a
    scalar); ``baseline`` names the floor's entry (absent → no floor is subtracted). Sources
    with fewer than 2 trials get NaN and take no share. ``chi2_std``: the std's CI is the χ²
    interval (scalars); otherwise the bootstrap's (the adapter ΔW).
    """
    usable = [s for s, d in d2s.items() if len(d) >= 2]
    floor = usable.index(baseline) if baseline in usable else None
    var = np.array([pair_variance(np.asarray(d2s[s], dtype=float)) for s in usable])
    comps = _components(var, floor) if usable else var
    shares = _shares(comps) if usable else comps
    std_ci = share_ci = np.full((2, len(usable)), np.nan)
    if usable:
        std_ci, share_ci = _bootstrap([np.asarray(d2s[s], dtype=float) for s in usable], floor,
                                      confidence, n_resamples, seed)
    rows = []
    for source, d2 in d2s.items():
        row = {"source": source, "n": len(d2)} | dict.fromkeys(TABLE_COLUMNS[6:], math.nan)
        if source in usable:
            k = usable.index(source)
            low, high = chi2_std_interval(float(var[k]), len(d2), confidence) if chi2_std else std_ci[:, k]
            row |= {"variance": float(var[k]), "std": math.sqrt(var[k]),
                    "std_ci_low": float(low), "std_ci_high": float(high),
                    "component": float(comps[k]), "share": float(shares[k]),
                    "share_ci_low": float(share_ci[0, k]), "share_ci_high": float(share_ci[1, k])}
        rows.append(row)
    return f_vs_next(pd.DataFrame(rows), baseline)


def _metric_d2s(runs: pd.DataFrame, design: pd.DataFrame, metric: str,
                log_scale: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per source of one group: D² of the cell's finite values (log when asked), and means."""
    d2s, means = {}, {}
    for _, row in design.iterrows():
        values = metric_values(runs, row["cell"], metric).to_numpy()
        if log_scale:
            values = np.log(values[values > 0])
        d2s[row["source"]] = scalar_d2(values)
        means[row["source"]] = float(values.mean()) if len(values) else math.nan
    return d2s, means


def _weight_d2s(pairs: pd.DataFrame, design: pd.DataFrame) -> tuple[dict[str, np.ndarray],
                                                                    dict[str, float]]:
    """Per source: D² of whole-adapter ΔW over the group's pooled mean ||ΔW||² (relative)."""
    mats = {row["source"]: adapter_distance.distance_matrix(pairs, row["cell"])
            for _, row in design.iterrows()} if len(pairs) else {}
    norms = np.concatenate([n2 for _, _, n2 in mats.values()]) if mats else np.array([])
    scale = float(norms.mean()) if norms.size and norms.mean() > 0 else math.nan
    d2s = {s: d2 / scale for s, (_, d2, _) in mats.items() if math.isfinite(scale)}
    return d2s, {s: float(np.sqrt(n2).mean()) if n2.size else math.nan
                 for s, (_, _, n2) in mats.items()}


def decompose(runs: pd.DataFrame, pairs: pd.DataFrame | None = None, seed: int = 0,
              n_resamples: int = 9999) -> pd.DataFrame:
    """The OFAT table for every group of :func:`ofat_design`: one row per (metric, group,
    source) with the columns of :data:`TABLE_COLUMNS` (``mean``: of the metric; for
    :data:`WEIGHTS`, the mean ||ΔW||_F). ``pairs`` (:func:`adapter_distance.pair_table`) adds the
    adapter rows; without it they are left out."""
    design = ofat_design(runs)
    frames = []
    for group, cells in design.groupby("group", sort=True):
        todo = [(label, *_metric_d2s(runs, cells, key, log_scale))
                for label, key, log_scale in OFAT_METRICS]
        if pairs is not None:
            todo.append((WEIGHTS, *_weight_d2s(pairs, cells)))
        for label, d2s, means in todo:
            if not d2s:
                continue
            table = components(d2s, BASELINE, n_resamples=n_resamples, seed=seed, chi2_std=label != WEIGHTS)
            cell_of = dict(zip(cells["source"], cells["cell"]))
            frames.append(table.assign(metric=label, group=group,
                                       cell=table["source"].map(cell_of),
                                       mean=table["source"].map(means)))
    if not frames:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(TABLE_COLUMNS)]


@dataclass(frozen=True)
class VarianceSources:
    """The variance-sources section's numbers (:func:`source_results`): the one-factor-at-a-time
    components (:func:`decompose`; empty without ``vary-*`` cells) and the ANOVA of each crossed
    design (:func:`analysis.compute.anova.crossed_anova`; ``[]`` without one)."""

    ofat: pd.DataFrame
    anova: list[tuple[anova.Design, str, pd.DataFrame]]


def source_results(runs: pd.DataFrame, pairs: pd.DataFrame) -> VarianceSources:
    """Where the variance of ``runs`` comes from; ``pairs``: the study's
    :func:`analysis.compute.adapter_distance.pair_table` (the adapter rows of the OFAT table)."""
    return VarianceSources(ofat=decompose(runs, pairs), anova=anova.crossed_anova(runs))
