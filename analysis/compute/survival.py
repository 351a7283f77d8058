"""Time to blow-up: per run, the first optimizer step at which the validation loss crosses
ln(k × the base model's perplexity), censored at the run's last step; per arm, a Kaplan–Meier
curve with its band, the median step to blow-up with its CI, and the blow-up rate at the horizon
beside the paper's; per pair of arms, a log-rank test; per arm and traced step, the update
inflation's median and interquartile range over trials. Compute only: frames and numbers.

The statistics are statsmodels' and scipy's, not written here:
:class:`statsmodels.duration.survfunc.SurvfuncRight` (Kaplan–Meier, Greenwood standard errors,
``quantile``/``quantile_ci`` for the median), :func:`statsmodels.duration.survfunc.survdiff`
(log-rank), :func:`statsmodels.stats.proportion.proportion_confint` (``method="beta"``:
Clopper–Pearson) and :func:`scipy.stats.fisher_exact`. Only the pointwise band is assembled here
from statsmodels' Greenwood errors (its ``SurvfuncRight`` has no pointwise interval), on the
log(−log S) scale that its ``quantile_ci(method="cloglog")`` inverts, so band and median CI agree.

A study is a *horizon study* (:func:`horizon_arms`) when at least :data:`MIN_ARMS` arms at one
learning rate, outside any LR grid (:func:`analysis.compute.lr_edge.grid_arms`), each hold
:data:`MIN_RUNS` finished runs with a recorded base perplexity and a validation curve, and each
has a run with at least :data:`MIN_CHECKS` validation checks (a time axis). Other studies
(a 200-step LR grid, the 80-step default study with 4 checks, a long pair of single runs) get
``None``: their blow-ups at the end are in *Blow-ups and equivalence* and *Learning-rate edge*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats as sps
from statsmodels.duration.survfunc import SurvfuncRight, survdiff
from statsmodels.stats.proportion import proportion_confint

from analysis.compute.blowups import BASE_METRIC
from analysis.compute.lr_edge import arm_of, arm_order, grid_arms, trace_rows
from analysis.config import DEFAULT, AnalysisConfig
from analysis.load import FINISHED, Study, column, optim_bits
from repeatability.records import artifacts
from repeatability.records.errors import RunDirError
from repeatability.records.summary import COLUMNS as S

MIN_ARMS = 2  # arms at one LR: a comparison
MIN_RUNS = 2  # finished runs per arm: a curve (the explain-edge study's long pair has 1 each)
MIN_CHECKS = 10  # validation checks in an arm's longest run: a time axis (the default study has 4)
SENSITIVITY_K = (1.0, 100.0)  # beside config.blowup_k: any rise above the base, and a hundredfold


@dataclass(frozen=True)
class PaperSetup:
    """The paper's setup, as it reports it (Alahmari et al. 2024, Tables 1–2; docs/protocols.md)."""

    blowups: int = 22  # 8-bit runs that blew up ...
    n: int = 28  # ... of 4 LLMs x 2 datasets x 7 trials (per optimizer precision)
    blowups_32bit: int = 0  # 32-bit runs that blew up, of as many

    def reference(self, bits: float) -> int | None:
        """The paper's blow-ups in the arm's optimizer precision (of :attr:`n`): 8-bit state or
        less → :attr:`blowups`, 32-bit → :attr:`blowups_32bit`; None for any other (or unknown)."""
        if bits <= 8:
            return self.blowups
        return self.blowups_32bit if bits == 32 else None
    models: str = "7B–20B (Llama2-7B, GPT-NeoX-20B and their chat models)"
    steps: str = "~6,000 (3 epochs)"
    compute: str = "fp16 on an NVIDIA A100"
    batch_size: int = 1
    max_length: int = 512


PAPER = PaperSetup()
RUN_COLUMNS = ("run", "cell", "trial", "arm", "lr", "k", "base", "threshold_nats", "event", "step",
               "how", "last_step", "n_checks")
ARM_COLUMNS = ("arm", "k", "n", "blowups", "rate", "ci_low", "ci_high", "median_step", "median_low",
               "median_high", "paper_blowups", "paper_n", "fisher_p")
KM_COLUMNS = ("arm", "k", "step", "n_risk", "n_events", "survival", "band_low", "band_high")
LOGRANK_COLUMNS = ("k", "x", "y", "n_x", "n_y", "events_x", "events_y", "chi2", "p")
INFLATION_COLUMNS = ("arm", "step", "n", "median", "q25", "q75")
LEFT_OUT_COLUMNS = ("run", "cell", "trial", "status", "reason")


@dataclass(frozen=True)
class SurvivalResults:
    """Everything the time-to-blow-up section presents (:func:`compute_survival`).

    Attributes:
        arms: the horizon arms, fewer optimizer bits first (:func:`analysis.compute.lr_edge.arm_order`).
        lr: their learning rate; ks: the factors k (``primary`` = the config's blow-up k).
        horizon: the longest run's last step.
        runs: :func:`first_crossings`, one row per run and k.
        arm_table: :func:`arm_summary`; km: :func:`km_curves`; logrank: :func:`logrank`.
        inflation: :func:`inflation_bands` (empty without an optimizer trace).
        left_out: runs of the arms that are not judged (unfinished, or no base/curve), with why.
        setup: :func:`setup_facts`.
    """

    arms: tuple[str, ...]
    lr: float
    ks: tuple[float, ...]
    primary: float
    horizon: int
    runs: pd.DataFrame
    arm_table: pd.DataFrame
    km: pd.DataFrame
    logrank: pd.DataFrame
    inflation: pd.DataFrame
    left_out: pd.DataFrame
    setup: dict[str, Any]


def _val_checks(curves: pd.DataFrame) -> pd.DataFrame:
    """The validation rows, one per (cell, trial, step)."""
    val = curves[curves["split"] == "val"]
    return val[["cell", "trial", "step", "loss"]].astype({"step": int, "loss": float})


def eligible_runs(study: Study) -> pd.DataFrame:
    """:func:`analysis.compute.lr_edge.arm_of` with ``base`` (recorded base perplexity), ``n_checks``
    (validation rows), ``last_step`` (``metrics.steps``, else the curve's last) and ``reason`` (``""``
    when the run can be judged, else why not: a run not finished is one, e.g. still training)."""
    out = arm_of(study.runs)  # row i is study.runs' row i
    base = pd.to_numeric(column(study.runs, BASE_METRIC), errors="coerce").astype(float).to_numpy()
    out["base"] = np.where(np.isfinite(base) & (base > 0), base, math.nan)
    checks = _val_checks(study.curves).groupby(["cell", "trial"]).size()
    out["n_checks"] = [int(checks.get((c, t), 0)) for c, t in zip(out["cell"], out["trial"])]
    steps = pd.to_numeric(column(study.runs, S.metrics.steps), errors="coerce").to_numpy()
    last = study.curves.groupby(["cell", "trial"])["step"].max()
    out["last_step"] = [int(s) if math.isfinite(s) else int(last.get((c, t), 0))
                        for s, c, t in zip(steps, out["cell"], out["trial"])]
    out["reason"] = np.select([~out["status"].isin(FINISHED), out["base"].isna(), out["n_checks"] == 0],
                              ["not finished", "no base perplexity recorded", "no validation loss"], "")
    return out


def horizon_arms(runs: pd.DataFrame) -> list[str]:
    """The arms of :func:`eligible_runs` the survival analysis covers (module docstring): outside
    any LR grid, :data:`MIN_RUNS` judged runs each, a run with :data:`MIN_CHECKS` checks, and at least
    :data:`MIN_ARMS` such arms at one LR (several LRs: the one with the most arms, then the lowest)."""
    ok = runs[(runs["reason"] == "") & ~runs["arm"].isin(grid_arms(runs))]
    per_arm = ok.groupby("arm").agg(n=("run", "size"), checks=("n_checks", "max"), lr=("lr", "first"))
    per_arm = per_arm[(per_arm["n"] >= MIN_RUNS) & (per_arm["checks"] >= MIN_CHECKS)]
    by_lr = per_arm.groupby("lr").size()
    if by_lr.empty or by_lr.max() < MIN_ARMS:
        return []
    lr = min(by_lr[by_lr == by_lr.max()].index)
    return arm_order(runs[runs["arm"].isin(per_arm.index[per_arm["lr"] == lr])])


def _crossing(val: pd.DataFrame, threshold: float) -> float:
    """The first step whose validation loss exceeds ``threshold`` (a NaN/inf loss counts); NaN if none."""
    hit = val[~(val["loss"] <= threshold)]
    return float(hit["step"].min()) if len(hit) else math.nan


def first_crossings(study: Study, runs: pd.DataFrame, ks: tuple[float, ...]) -> pd.DataFrame:
    """One row per judged run of ``runs`` and k (:data:`RUN_COLUMNS`): ``threshold_nats`` =
    ln(k × base); ``event`` and ``step``: the first validation step above it, or the divergence step
    (``summary.divergence.step``) of a diverged run when earlier (``how``), else censored at
    ``last_step``."""
    val = _val_checks(study.curves).sort_values("step")
    div = pd.to_numeric(column(study.runs, S.divergence.step), errors="coerce")
    div_step = dict(zip(zip(study.runs["cell"], study.runs["trial"]), div.astype(float)))
    rows = []
    for _, run in runs[runs["reason"] == ""].iterrows():
        mine = val[(val["cell"] == run["cell"]) & (val["trial"] == run["trial"])]
        diverged = run["status"] == "diverged"
        at = div_step.get((run["cell"], run["trial"]), math.nan) if diverged else math.nan
        at = run["last_step"] if diverged and not math.isfinite(at) else at
        for k in ks:
            threshold = math.log(k * run["base"])
            crossed = _crossing(mine, threshold)
            step, how = min((crossed, "validation loss crossed"), (at, "diverged"),
                            key=lambda x: x[0] if math.isfinite(x[0]) else math.inf)
            event = math.isfinite(step)
            rows.append({**{c: run[c] for c in ("run", "cell", "trial", "arm", "lr", "base", "last_step",
                                                "n_checks")},
                         "k": k, "threshold_nats": threshold, "event": event,
                         "step": int(step) if event else int(run["last_step"]),
                         "how": how if event else "censored"})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def _km(rows: pd.DataFrame) -> SurvfuncRight:
    return SurvfuncRight(rows["step"].to_numpy(float), rows["event"].to_numpy(int))


def band(sf: SurvfuncRight, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise 1 − α band of a Kaplan–Meier estimate on the log(−log S) scale (Kalbfleisch &
    Prentice), from statsmodels' Greenwood errors: S^exp(±z·se/(S·|ln S|)); [0, 0] where S = 0."""
    s, se = np.asarray(sf.surv_prob, float), np.asarray(sf.surv_prob_se, float)
    z = sps.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = z * se / (s * np.abs(np.log(s)))
        low, high = s ** np.exp(width), s ** np.exp(-width)
    zero = s <= 0
    return np.where(zero, 0.0, low), np.where(zero, 0.0, high)


def km_curves(runs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per arm and k, the Kaplan–Meier estimate (:data:`KM_COLUMNS`): a row at step 0 (all at risk,
    survival 1), then one per step with a blow-up (statsmodels' ``surv_times``), with its band."""
    out = []
    for (arm, k), rows in runs.groupby(["arm", "k"], sort=False):
        sf = _km(rows)
        low, high = band(sf, alpha)
        out.append(pd.DataFrame({"arm": arm, "k": k, "step": [0, *sf.surv_times.astype(int)],
                                 "n_risk": [len(rows), *sf.n_risk.astype(int)],
                                 "n_events": [0, *sf.n_events.astype(int)],
                                 "survival": [1.0, *sf.surv_prob], "band_low": [1.0, *low],
                                 "band_high": [1.0, *high]}))
    return pd.concat(out, ignore_index=True)[list(KM_COLUMNS)] if out else pd.DataFrame(columns=list(KM_COLUMNS))


def median_step(rows: pd.DataFrame, alpha: float) -> tuple[float, float, float]:
    """The median step to blow-up and its 1 − α CI (statsmodels: the first step at which the
    estimate falls *below* 0.5, SAS's rule; the CI inverts the log(−log) test). NaN: not reached
    (at most half blew up); an upper bound ``inf``: not reached within the horizon."""
    sf = _km(rows)
    if not len(sf.surv_times):
        return math.nan, math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = sf.quantile_ci(0.5, alpha=alpha, method="cloglog")
    return float(sf.quantile(0.5)), float(low), float(high)


def rate_ci(blowups: int, n: int, alpha: float) -> tuple[float, float]:
    """Clopper–Pearson 1 − α interval of blowups/n (statsmodels ``method="beta"``); NaN when n = 0."""
    if n == 0:
        return math.nan, math.nan
    low, high = proportion_confint(blowups, n, alpha=alpha, method="beta")
    return float(low), float(high)


def fisher_vs_paper(blowups: int, n: int, paper_blowups: int = PAPER.blowups, paper_n: int = PAPER.n) -> float:
    """Two-sided Fisher's exact p of blowups/n against the paper's paper_blowups/paper_n (default:
    its 8-bit 22/28)."""
    table = [[blowups, n - blowups], [paper_blowups, paper_n - paper_blowups]]
    return float(sps.fisher_exact(table, alternative="two-sided").pvalue) if n else math.nan


def arm_summary(runs: pd.DataFrame, primary: float, alpha: float,
                bits: dict[str, float] | None = None) -> pd.DataFrame:
    """Per arm and k (:data:`ARM_COLUMNS`): n, blow-ups within the horizon, rate with its
    Clopper–Pearson CI, the median step with its CI (:func:`median_step`), and, at k = ``primary``,
    the paper's blow-ups in the arm's optimizer precision (``bits``, arm → requested bits: 8-bit
    22/28, 32-bit 0/28; :meth:`PaperSetup.reference`) with Fisher's exact p against them."""
    out = []
    for (arm, k), rows in runs.groupby(["arm", "k"], sort=False):
        n, hits = len(rows), int(rows["event"].sum())
        paper = PAPER.reference((bits or {}).get(arm, math.nan)) if math.isclose(k, primary) else None
        out.append({"arm": arm, "k": k, "n": n, "blowups": hits, "rate": hits / n,
                    **dict(zip(("ci_low", "ci_high"), rate_ci(hits, n, alpha))),
                    **dict(zip(("median_step", "median_low", "median_high"), median_step(rows, alpha))),
                    "paper_blowups": math.nan if paper is None else paper,
                    "paper_n": math.nan if paper is None else PAPER.n,
                    "fisher_p": math.nan if paper is None else fisher_vs_paper(hits, n, paper, PAPER.n)})
    return pd.DataFrame(out, columns=list(ARM_COLUMNS))


def logrank_p(x: pd.DataFrame, y: pd.DataFrame) -> tuple[float, float]:
    """statsmodels' log-rank chi² (1 df) and p between two arms' rows; NaN when neither had a blow-up."""
    both = pd.concat([x, y])
    if not both["event"].any():
        return math.nan, math.nan
    chi2, p = survdiff(both["step"].to_numpy(float), both["event"].to_numpy(int),
                       np.r_[np.zeros(len(x), int), np.ones(len(y), int)])
    return float(chi2), float(p)


def logrank(runs: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Per k and pair of arms in ``arms``' order (:data:`LOGRANK_COLUMNS`): the log-rank test."""
    out = []
    for k, rows in runs.groupby("k", sort=True):
        for x, y in combinations(arms, 2):
            rx, ry = rows[rows["arm"] == x], rows[rows["arm"] == y]
            chi2, p = logrank_p(rx, ry)
            out.append({"k": k, "x": x, "y": y, "n_x": len(rx), "n_y": len(ry),
                        "events_x": int(rx["event"].sum()), "events_y": int(ry["event"].sum()),
                        "chi2": chi2, "p": p})
    return pd.DataFrame(out, columns=list(LOGRANK_COLUMNS))


def inflation_bands(study: Study, runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm and traced step (:data:`INFLATION_COLUMNS`): trials traced, and the median, 25th
    and 75th percentile (numpy's linear rule) of ``update_inflation`` (the trace's ``all`` row)."""
    traces = trace_rows(study, runs[runs["reason"] == ""])
    traces = traces.dropna(subset=["update_inflation"])
    if traces.empty:
        return pd.DataFrame(columns=list(INFLATION_COLUMNS))
    grouped = traces.groupby(["arm", "step"], sort=True)["update_inflation"]
    out = grouped.size().rename("n").to_frame()
    for name, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
        out[name] = grouped.quantile(q)
    return out.reset_index()[list(INFLATION_COLUMNS)]


def _config_value(study: Study, run: str, *keys: str) -> Any:
    """A value of the run's saved ``config.yaml`` (``train``, ``batch_size``); None if absent."""
    try:
        node: Any = yaml.safe_load(artifacts.read_config(study.path / run))
    except (RunDirError, yaml.YAMLError):
        return None
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def setup_facts(study: Study, runs: pd.DataFrame) -> dict[str, Any]:
    """What these runs recorded of the setup the paper's differs in: models, the longest run's
    steps, compute dtype, device type and max length (summaries), batch size (the saved
    ``config.yaml``); each a tuple of the distinct values (empty: not recorded)."""
    judged = runs[runs["reason"] == ""]
    rows = study.runs[study.runs["run"].isin(judged["run"])]
    batch = {_config_value(study, r, "train", "batch_size") for r in judged["run"]} - {None}

    def values(key: str) -> tuple[str, ...]:
        return tuple(sorted({str(v) for v in column(rows, key).dropna()}))

    return {"models": tuple(sorted(judged["model"].unique())), "steps": int(judged["last_step"].max()),
            "compute_dtype": values(S.device.compute_dtype), "device": values(S.device.type),
            "batch_size": tuple(sorted(batch)), "max_length": values(S.data.max_length)}


def compute_survival(study: Study, config: AnalysisConfig = DEFAULT) -> SurvivalResults | None:
    """Every number of the time-to-blow-up section; ``None`` when ``study`` is not a horizon study."""
    runs = eligible_runs(study)
    arms = horizon_arms(runs)
    if not arms:
        return None
    rank = {arm: i for i, arm in enumerate(arms)}
    mine = runs[runs["arm"].isin(arms)].assign(rank=lambda f: f["arm"].map(rank))
    mine = mine.sort_values(["rank", "trial"]).drop(columns="rank")  # every table in the arms' order
    ks = tuple(sorted({config.blowup_k, *SENSITIVITY_K}))
    crossings = first_crossings(study, mine, ks)
    left = mine[mine["reason"] != ""][list(LEFT_OUT_COLUMNS)]
    return SurvivalResults(arms=tuple(arms), lr=float(mine["lr"].iloc[0]), ks=ks, primary=config.blowup_k,
                           horizon=int(crossings["last_step"].max()), runs=crossings,
                           arm_table=arm_summary(crossings, config.blowup_k, config.alpha,
                                                 mine.assign(bits=optim_bits(study.runs)).groupby("arm")["bits"]
                                                 .min().to_dict()),
                           km=km_curves(crossings, config.alpha), logrank=logrank(crossings, arms),
                           inflation=inflation_bands(study, mine), left_out=left.reset_index(drop=True),
                           setup=setup_facts(study, mine))
