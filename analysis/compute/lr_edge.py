"""The learning-rate edge: where an arm's runs start to blow up as the learning rate grows, how
sensitive its held-out perplexity is to the learning rate, and how far its updates stray from
exact fp32 AdamW's on the way there (the optimizer trace). Compute only: frames and numbers.

An *arm* is a cell with the learning-rate label taken out of its variant
(``smollm2-135m__quotes__paged_adamw_8bit__lr0.001`` → ``smollm2-135m__quotes__paged_adamw_8bit``);
a run's learning rate is the one its summary recorded (``optimizer.requested.lr``), never parsed
from a name. A study *has an LR axis* when some arm holds runs at two or more learning rates;
everything here works on any such study (experiments/explain_edge.yaml is one).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np
import pandas as pd

from analysis.compute import blowups
from analysis.compute.stats import PRIMARY_METRIC
from analysis.config import DEFAULT, AnalysisConfig
from analysis.load import FINISHED, Study, column, optim_bits
from repeatability.records import curve_files
from repeatability.records.errors import RunDirError
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

LR = S.optimizer.requested.lr
EDGE_RATE = 0.5  # the edge: the lowest grid LR at which at least half the runs blew up
PAPER_LR = 2e-4  # the QLoRA recipe's learning rate, the one Alahmari et al. 2024 trained with
ALL_KINDS = "all"  # the trace's row over every module kind (repeatability.trial.optimtrace.ALL; not
# imported: that module needs torch, the analysis does not)
TRACE_METRICS = ("update_inflation", "v_ratio_median", "v_top_code_fraction")
ARM_COLUMNS = ("run", "cell", "trial", "status", "model", "dataset", "optim", "variant", "arm", "lr")
RATE_COLUMNS = ("arm", "model", "dataset", "optim", "variant", "lr", "cells", "n_finished", "n",
                "blowups", "rate", "ci_low", "ci_high", "ppl_median", "ppl_min", "ppl_max", "base",
                "threshold")
EDGE_COLUMNS = ("arm", "model", "dataset", "optim", "variant", "n_lrs", "lowest_lr", "largest_lr",
                "edge", "beyond", "edge_blowups", "edge_n", "edge_low", "edge_high", "below_blowups",
                "below_n")
RATIO_COLUMNS = ("x", "y", "edge_x", "edge_y", "beyond_x", "beyond_y", "ratio", "ratio_lower_bound",
                 "ratio_upper_bound", "ratio_low", "ratio_high")
BASE_K = 1.0  # the "worse than the untrained base model" criterion beside config.blowup_k
SENSITIVITY_COLUMNS = ("arm", "model", "dataset", "optim", "variant", "n_lrs", "n_runs", "log_base",
                       "best_lr", "best", "mean", "sensitivity")
TRACE_COLUMNS = ("arm", "lr", "cell", "trial", "step") + TRACE_METRICS
# The mechanism under test (docs/historical-optimizer-maps.md): bitsandbytes 0.41.0's unsigned
# 8-bit map, as its kernels read it, tops out at 0.0933 of the block's absmax (qmaps.py)
TOP_CODE_0410 = 0.0933
BETA2 = 0.999  # Adam's beta2 in every optim preset
HORIZON_STEPS = (200, 1000, 6000)  # the grid's length, the long pair's, the paper's (~3 epochs)
HORIZON_COLUMNS = ("arm", "lr", "n", "last_step", "inflation_at_200", "inflation_last",
                   "top_code_last", "predicted_at_200", "predicted_last", "predicted_at_6000",
                   "perplexity_median", "blowups", "judged")
_LR_LABEL = re.compile(r"(?:^|(?<=[-_+.]))lr\d[\d.]*(?:e[-+]?\d+)?(?=$|[-_+])", re.IGNORECASE)


def strip_lr(variant: str) -> str:
    """The variant without its learning-rate label: ``lr0.001`` → ``""``, ``fixed-lr1e-05`` →
    ``fixed``; a variant without one is returned as it is."""
    rest = _LR_LABEL.sub("", variant or "")
    return re.sub(r"[-_+.]{2,}", lambda m: m.group(0)[0], rest).strip("-_+.")


def arm_of(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (:data:`ARM_COLUMNS`): ``variant`` without its LR label, ``arm`` = the
    cell name without it, ``lr`` = the recorded learning rate (NaN when not recorded; rounded to
    10 significant digits so that one grid value read from several runs is one value)."""
    out = runs[["run", "cell", "trial", "status", "model", "dataset", "optim"]].copy()
    out["variant"] = [strip_lr(str(v)) if isinstance(v, str) else "" for v in runs["variant"]]
    out["arm"] = ["__".join(p for p in parts if p)
                  for parts in zip(out["model"], out["dataset"], out["optim"], out["variant"])]
    lrs = pd.to_numeric(column(runs, LR), errors="coerce").astype(float)
    out["lr"] = [float(f"{v:.10g}") if math.isfinite(v) else math.nan for v in lrs]
    return out.reset_index(drop=True)[list(ARM_COLUMNS)]


def has_lr_axis(arms: pd.DataFrame) -> bool:
    """Whether some arm of :func:`arm_of` holds runs at two or more learning rates."""
    return bool(grid_arms(arms))


def grid_arms(arms: pd.DataFrame) -> list[str]:
    """The arms of :func:`arm_of` that hold runs at two or more learning rates (the grid); an
    arm at one LR (a long run beside the grid, say) has no edge, only its trace."""
    counts = arms.dropna(subset=["lr"]).groupby("arm")["lr"].nunique()
    return sorted(counts[counts >= 2].index)


def predicted_top_inflation(step: float, beta2: float = BETA2, top: float = TOP_CODE_0410) -> float:
    """The mechanism's prediction for a block's largest second moment under a map topping at
    ``top``: re-quantized every step, it settles at (1-β2)·g²/(1-top·β2), while exact Adam's
    (uncorrected) moment is (1-β2^t)·g² for a steady gradient g, so the update is inflated by
    sqrt((1-β2^t)·(1-top·β2)/(1-β2)): 12.8 at step 200, 23.9 at 1,000, 30.1 at 6,000. A
    prediction for the block-max elements, not a measurement of the whole update."""
    return math.sqrt((1 - beta2 ** step) * (1 - top * beta2) / (1 - beta2))


def horizon(curves: pd.DataFrame, grid: list[str], results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per traced (arm, lr) outside the grid (:data:`HORIZON_COLUMNS`): update inflation (median
    over trials) at step 200 and at its last step, the top-code share there,
    :func:`predicted_top_inflation` at step 200, at the last step and at 6,000, and, from
    ``results`` (:func:`outcomes` of those runs), the held-out perplexity (median over trials) and
    the blow-ups among the runs judged."""
    rows = []
    for (arm, lr), c in curves[~curves["arm"].isin(grid)].groupby(["arm", "lr"], sort=True):
        c = c.sort_values("step")
        last, at_200 = c.iloc[-1], c[c["step"] <= HORIZON_STEPS[0]]
        mine = (results[(results["arm"] == arm) & np.isclose(results["lr"], lr, rtol=1e-9, atol=0)]
                if results is not None else pd.DataFrame(columns=["perplexity", "blowup", "known"]))
        judged = mine[mine["known"].astype(bool)] if len(mine) else mine
        rows.append({"arm": arm, "lr": lr, "n": int(last["n"]), "last_step": int(last["step"]),
                     "inflation_at_200": at_200["update_inflation_median"].iloc[-1] if len(at_200) else math.nan,
                     "inflation_last": last["update_inflation_median"],
                     "top_code_last": last["v_top_code_fraction_median"],
                     "predicted_at_200": predicted_top_inflation(HORIZON_STEPS[0]),
                     "predicted_last": predicted_top_inflation(last["step"]),
                     "predicted_at_6000": predicted_top_inflation(HORIZON_STEPS[2]),
                     "perplexity_median": _ppl(mine["perplexity"])[0] if len(mine) else math.nan,
                     "blowups": int(judged["blowup"].astype(bool).sum()), "judged": len(judged)})
    return pd.DataFrame(rows, columns=list(HORIZON_COLUMNS))


def outcomes(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT,
             arms: pd.DataFrame | None = None, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """:func:`analysis.compute.blowups.run_outcomes` (one row per finished run: perplexity, threshold,
    ``blowup``, ``known``) with each run's ``arm``, arm ``variant`` and ``lr``; runs without a
    recorded LR are left out."""
    arms = arm_of(runs) if arms is None else arms
    result = blowups.run_outcomes(runs, config, metric).drop(columns=["variant"])
    result = result.merge(arms[["cell", "trial", "arm", "variant", "lr"]], on=["cell", "trial"],
                          how="left")
    return result.dropna(subset=["lr"]).reset_index(drop=True)


def _ppl(values: pd.Series) -> tuple[float, float, float]:
    """Median, min, max of the perplexities that are not NaN (inf kept: an overflowed run)."""
    x = values.astype(float).dropna().to_numpy()
    if not x.size:
        return math.nan, math.nan, math.nan
    return float(np.median(x)), float(x.min()), float(x.max())


def rates(runs: pd.DataFrame, config: AnalysisConfig = DEFAULT,
          arms: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (arm, lr) (:data:`RATE_COLUMNS`): finished runs, runs judged (``n``), blow-ups, rate,
    exact (Clopper–Pearson) CI at 1 − α, median/min/max held-out perplexity, and the base
    perplexity (``base``: the reference of :func:`analysis.compute.blowups.references`) with the
    blow-up ``threshold`` = k × base."""
    runs_out = outcomes(runs, config, arms)
    refs = blowups.references(runs, config).set_index(["model", "dataset"])
    rows = []
    for (arm, lr), group in runs_out.groupby(["arm", "lr"], sort=True):
        judged = group[group["known"]]
        n, k = len(judged), int(judged["blowup"].sum())
        low, high = blowups.clopper_pearson(k, n, 1 - config.alpha)
        first = group.iloc[0]
        ref = refs.loc[(first["model"], first["dataset"])]
        rows.append({"arm": arm, "model": first["model"], "dataset": first["dataset"],
                     "optim": first["optim"], "variant": first["variant"], "lr": lr,
                     "cells": ", ".join(sorted(group["cell"].unique())), "n_finished": len(group),
                     "n": n, "blowups": k, "rate": k / n if n else math.nan, "ci_low": low,
                     "ci_high": high, **dict(zip(("ppl_median", "ppl_min", "ppl_max"),
                                                 _ppl(group["perplexity"]))),
                     "base": ref["value"], "threshold": ref["threshold"]})
    return pd.DataFrame(rows, columns=list(RATE_COLUMNS))


def edges(rate_table: pd.DataFrame, edge_rate: float = EDGE_RATE) -> pd.DataFrame:
    """Per arm (:data:`EDGE_COLUMNS`): the edge = the lowest grid LR (among those with a judged
    run) whose blow-up rate is at least ``edge_rate``, with its blow-ups/n; when no LR reaches
    it, ``edge`` is NaN and ``beyond`` True: the edge lies beyond the grid, above
    ``largest_lr``.

    The edge as an interval (``edge_low``, ``edge_high``]: from the last grid LR below the edge
    (every LR below it stayed under ``edge_rate``; 0 when the edge is the grid's lowest LR) to the
    edge (inf when it lies beyond the grid), with the blow-ups/n at ``edge_low``."""
    rows = []
    for arm, group in rate_table[rate_table["n"] > 0].groupby("arm", sort=True):
        group = group.sort_values("lr")
        over = group[group["rate"] >= edge_rate]
        hit = over.iloc[0] if len(over) else None
        below = group[group["lr"] < hit["lr"]] if hit is not None else group
        last_below = below.iloc[-1] if len(below) else None
        first = group.iloc[0]
        rows.append({"arm": arm, **{k: first[k] for k in ("model", "dataset", "optim", "variant")},
                     "n_lrs": len(group), "lowest_lr": group["lr"].min(),
                     "largest_lr": group["lr"].max(),
                     "edge": math.nan if hit is None else hit["lr"], "beyond": hit is None,
                     "edge_blowups": 0 if hit is None else int(hit["blowups"]),
                     "edge_n": 0 if hit is None else int(hit["n"]),
                     "edge_low": 0.0 if last_below is None else float(last_below["lr"]),
                     "edge_high": math.inf if hit is None else float(hit["lr"]),
                     "below_blowups": 0 if last_below is None else int(last_below["blowups"]),
                     "below_n": 0 if last_below is None else int(last_below["n"])})
    return pd.DataFrame(rows, columns=list(EDGE_COLUMNS))


def arm_order(table: pd.DataFrame) -> list[str]:
    """The arms of ``table`` (with ``arm`` and ``optim``): fewer optimizer bits first (by the
    optimizer's name), then by name."""
    first = table.drop_duplicates("arm")
    bits = optim_bits(first).fillna(np.inf).to_numpy()
    return list(first.assign(bits=bits).sort_values(["bits", "arm"])["arm"])


def _ratio_row(x: pd.Series, y: pd.Series) -> dict:
    """One pair: ratio = edge_y / edge_x; a bound when one edge lies beyond its grid (above
    ``largest_lr``): y beyond → ratio > largest_y / edge_x; x beyond → ratio < edge_y / largest_x.
    With the edges as intervals, the ratio lies in (``ratio_low``, ``ratio_high``) =
    (edge_low_y / edge_high_x, edge_high_y / edge_low_x): the grid's resolution, not a CI."""
    lower = y["largest_lr"] / x["edge"] if y["beyond"] and not x["beyond"] else math.nan
    upper = y["edge"] / x["largest_lr"] if x["beyond"] and not y["beyond"] else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        low = float(np.float64(y["edge_low"]) / np.float64(x["edge_high"]))
        high = float(np.float64(y["edge_high"]) / np.float64(x["edge_low"])) if x["edge_low"] > 0 else math.inf
    return {"x": x["arm"], "y": y["arm"], "edge_x": x["edge"], "edge_y": y["edge"],
            "beyond_x": bool(x["beyond"]), "beyond_y": bool(y["beyond"]),
            "ratio": y["edge"] / x["edge"], "ratio_lower_bound": lower, "ratio_upper_bound": upper,
            "ratio_low": 0.0 if math.isnan(low) else low, "ratio_high": high}


def edge_ratios(edge_table: pd.DataFrame) -> pd.DataFrame:
    """Every pair of arms of the same (model, dataset) (:data:`RATIO_COLUMNS`): x = the arm with
    fewer optimizer bits (then by name), ratio = edge_y / edge_x (how many times larger a learning
    rate y takes before it tips over); NaN with a bound when an edge lies beyond the grid, NaN
    without one when both do. Arms of different models or datasets are not compared: their grids
    and references differ."""
    rows = []
    for _, group in edge_table.groupby(["model", "dataset"], sort=True):
        group = group.set_index("arm", drop=False).loc[arm_order(group)]
        rows += [_ratio_row(x, y) for (_, x), (_, y) in combinations(group.iterrows(), 2)]
    return pd.DataFrame(rows, columns=list(RATIO_COLUMNS))


def clipped_log_ppl(runs: pd.DataFrame, refs: pd.DataFrame, arms: pd.DataFrame | None = None,
                    metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """Per finished run with a recorded LR: ``log_ppl``, ``log_base`` (the base model's recorded
    perplexity; NaN when the (model, dataset) has none) and ``value`` = min(log ppl, log base),
    where a diverged run or a non-finite perplexity counts as the base."""
    out = outcomes(runs, arms=arms, metric=metric)
    base = refs[refs["reference"] == blowups.REFERENCE_BASE].set_index(["model", "dataset"])["value"]
    out["log_base"] = [math.log(base[k]) if k in base.index else math.nan
                       for k in zip(out["model"], out["dataset"])]
    ppl = out["perplexity"].astype(float)
    usable = np.isfinite(ppl) & (ppl > 0) & (out["status"] != "diverged")
    out["log_ppl"] = np.where(usable, np.log(ppl.where(usable, 1.0)), math.nan)
    clipped = np.fmin(out["log_ppl"], out["log_base"])  # fmin: a NaN log ppl → the base
    out["value"] = clipped.where(out["log_base"].notna())  # no base: nothing to clip at, NaN
    return out


def lr_sensitivity(runs: pd.DataFrame, refs: pd.DataFrame,
                   arms: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm (:data:`SENSITIVITY_COLUMNS`): LR sensitivity after Wortsman et al. 2023,
    "Small-scale proxies for large-scale Transformer training instabilities" (arXiv:2309.14322,
    §2.2): E_lr[min(ℓ(lr), ℓ0) − min_lr ℓ(lr)], ℓ0 the loss at initialisation.

    Here ℓ is the held-out log perplexity (mean token NLL), ℓ0 the base model's (``refs``,
    :func:`analysis.compute.blowups.references`; NaN when no run recorded it), each run clipped at ℓ0
    (:func:`clipped_log_ppl`: a diverged run counts as ℓ0), v(lr) = the mean over the trials at
    lr, ``best`` = min_lr v(lr) at ``best_lr``, ``mean`` = mean over the grid of v(lr), and
    ``sensitivity`` = mean − best (0: every LR as good as the best; at most ℓ0 − best).
    """
    values = clipped_log_ppl(runs, refs, arms)
    rows = []
    for arm, group in values.groupby("arm", sort=True):
        per_lr = group.groupby("lr")["value"].mean()
        first = group.iloc[0]
        finite = per_lr.notna().all()
        best_lr = float(per_lr.idxmin()) if finite else math.nan
        rows.append({"arm": arm, **{k: first[k] for k in ("model", "dataset", "optim", "variant")},
                     "n_lrs": len(per_lr), "n_runs": len(group), "log_base": first["log_base"],
                     "best_lr": best_lr, "best": per_lr.min() if finite else math.nan,
                     "mean": per_lr.mean() if finite else math.nan,
                     "sensitivity": per_lr.mean() - per_lr.min() if finite else math.nan})
    return pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))


def trace_rows(study: Study, arms: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``all`` rows of every finished run's ``optimizer_trace.csv`` (read through
    :func:`repeatability.records.curve_files.read_optimizer_trace`), :data:`TRACE_COLUMNS`; a run
    without one adds nothing, an unreadable one is logged and skipped."""
    arms = arm_of(study.runs) if arms is None else arms
    done = arms[arms["status"].isin(FINISHED) & arms["lr"].notna()]
    rows = []
    for _, run in done.iterrows():
        try:
            trace = curve_files.read_optimizer_trace(study.path / run["run"])
        except RunDirError as exc:
            log.warning("%s: optimizer trace not read: %s", run["run"], exc)
            continue
        rows += [{"arm": run["arm"], "lr": run["lr"], "cell": run["cell"], "trial": run["trial"],
                  "step": r["step"], **{m: r.get(m, math.nan) for m in TRACE_METRICS}}
                 for r in trace if r.get("module_kind") == ALL_KINDS]
    return pd.DataFrame(rows, columns=list(TRACE_COLUMNS))


def _spread(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per ``keys``: ``n`` rows (trials), and the median, min and max of each trace metric."""
    names = [f"{m}_{s}" for m in TRACE_METRICS for s in ("median", "min", "max")]
    if frame.empty:
        return pd.DataFrame(columns=keys + ["n"] + names)
    grouped = frame.groupby(keys, sort=True)
    out = grouped.size().rename("n").to_frame()
    for m in TRACE_METRICS:
        out[[f"{m}_median", f"{m}_min", f"{m}_max"]] = grouped[m].agg(["median", "min", "max"]).to_numpy()
    return out.reset_index()


def inflation_curves(traces: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, lr, step) of :func:`trace_rows`: ``n`` trials and the median, min and max over
    them of ``update_inflation``, ``v_ratio_median`` and ``v_top_code_fraction``."""
    return _spread(traces, ["arm", "lr", "step"])


def inflation_at_end(traces: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, lr): each trial's last traced step, then the median, min and max over trials
    of the trace metrics there (as :func:`inflation_curves`), and ``last_step`` (the latest)."""
    if traces.empty:
        return _spread(traces, ["arm", "lr"]).assign(last_step=pd.Series(dtype=float))
    last = traces.sort_values("step").groupby(["cell", "trial"]).tail(1)
    out = _spread(last, ["arm", "lr"])
    out["last_step"] = last.groupby(["arm", "lr"], sort=True)["step"].max().to_numpy()
    return out


@dataclass(frozen=True)
class EdgeResults:
    """Everything the learning-rate edge section presents (:func:`compute_edge`).

    Attributes:
        outcomes: :func:`outcomes`, one row per finished run with its arm and LR.
        references: :func:`analysis.compute.blowups.references` (base perplexity and threshold).
        rates: :func:`rates`; edges: :func:`edges`; ratios: :func:`edge_ratios`.
        sensitivity: :func:`lr_sensitivity`.
        curves: :func:`inflation_curves`; at_end: :func:`inflation_at_end` (empty without a
            trace); both over every traced arm, the grid's and the others.
        horizon: :func:`horizon`, the traced arms outside the grid (a long run).
        base_edges: :func:`edges` when "blew up" means worse than the untrained base model
            (perplexity > :data:`BASE_K` × base) instead of ``config.blowup_k`` × base.
    Rates, edges, ratios and sensitivity cover the grid's arms only (:func:`grid_arms`).
    """

    outcomes: pd.DataFrame
    references: pd.DataFrame
    rates: pd.DataFrame
    edges: pd.DataFrame
    ratios: pd.DataFrame
    sensitivity: pd.DataFrame
    curves: pd.DataFrame
    at_end: pd.DataFrame
    horizon: pd.DataFrame
    base_edges: pd.DataFrame


def compute_edge(study: Study, config: AnalysisConfig = DEFAULT) -> EdgeResults | None:
    """Every number of the learning-rate edge of ``study``; ``None`` when it has no LR axis."""
    arms = arm_of(study.runs)
    grid = grid_arms(arms)
    if not grid:
        return None
    on_grid = arms[arms["arm"].isin(grid)]
    refs = blowups.references(study.runs, config)
    rate_table = rates(study.runs, config, on_grid)
    edge_table = edges(rate_table)
    traces = trace_rows(study, arms)
    curves = inflation_curves(traces)
    return EdgeResults(outcomes=outcomes(study.runs, config, on_grid), references=refs,
                       rates=rate_table, edges=edge_table, ratios=edge_ratios(edge_table),
                       sensitivity=lr_sensitivity(study.runs, refs, on_grid),
                       curves=curves, at_end=inflation_at_end(traces),
                       horizon=horizon(curves, grid, outcomes(study.runs, config, arms[~arms["arm"].isin(grid)])),
                       base_edges=edges(rates(study.runs, replace(config, blowup_k=BASE_K), on_grid)))
