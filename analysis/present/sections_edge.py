"""The report's section on the learning-rate edge (:mod:`analysis.compute.lr_edge`): an answer in
numbers first, then the tables and figures behind it. Same conventions as
:mod:`analysis.present.sections`; the section computes its own numbers
(:func:`analysis.compute.lr_edge.compute_edge`, :data:`LR_EDGE`); a study without an LR axis gets no section.
"""

from __future__ import annotations

import pandas as pd

from analysis.compute.lr_edge import EDGE_RATE, EdgeResults, compute_edge
from analysis.compute.results import Results
from analysis.config import AnalysisConfig
from analysis.present import plots_edge, prose_edge
from analysis.present.document import Doc
from analysis.present.formatting import format_interval, format_lr, format_number
from analysis.present.section import Section, Tables

# The hypothesis this section tests (stated, not concluded: the numbers above are the result)
MECHANISM = (
    "The mechanism under test: bitsandbytes 0.41.0's unsigned 8-bit map tops out at 0.0933 of a "
    "block's absmax, so each step a block's largest second moment is stored ~10.7x too small; "
    "re-quantized every step it settles near (1-β2)·g²/(1-0.0933·β2) ≈ 1e-3·g² instead of ≈ g², which "
    "makes Adam's update for the largest-gradient parameters up to ≈30x too large once bias "
    "correction (1-β2^t: 0.18 at step 200, 0.998 at step 6,000) has faded. A blow-up at LRs where "
    "32-bit Adam holds, and an inflation that grows with the step, would support it; an inflation "
    "that stays near 1 would count against it (the trace measures the whole update, the formula "
    "only a block's largest element). Anchors: Wortsman et al. 2023 (small-scale proxies: LR sensitivity), "
    "Wortsman, Dettmers et al. 2023 (loss spikes after an under-estimated second moment), "
    "Dettmers et al. 2022 (block-wise quantization keeps each block's largest state exact).")
GPU_TEST = (
    "On a GPU, the paper's own cells carry the 0.41.0 arm beside today's 8-bit and 32-bit; with the "
    "trace: `python -m repeatability.run -m experiments=paper_neox20b_quotes "
    "diagnostics.optimizer_trace=true` (add `hydra/launcher=slurm` on a cluster; "
    "experiments/paper_llama2_7b_quotes.yaml and the two chat cells likewise).")


def _definitions(doc: Doc, config: AnalysisConfig) -> None:
    doc.para("An arm is a cell without the learning-rate label of its variant; each run's LR is "
             "the one its summary recorded (`optimizer.requested.lr`). A finished run blew up when "
             f"it diverged or its held-out perplexity exceeds k = {format_number(config.blowup_k)} "
             "× the base model's (*Blow-ups and equivalence*); CIs are exact (Clopper–Pearson) "
             f"{1 - config.alpha:.0%} intervals. Edge: the lowest LR of the grid whose blow-up rate "
             f"is at least {EDGE_RATE:.0%}; \"beyond the grid\" when none is. LR sensitivity "
             "(Wortsman et al. 2023, \"Small-scale proxies for large-scale Transformer training "
             "instabilities\", §2.2): E_lr[min(ℓ(lr), ℓ0) − min_lr ℓ(lr)] with ℓ the held-out log "
             "perplexity averaged over trials, each run clipped at ℓ0 = the base model's (a "
             "diverged run counts as ℓ0). Update inflation: norm of the update the optimizer "
             "applied to the LoRA parameters / norm of the update exact fp32 AdamW would have "
             "applied from the same gradients (`optimizer_trace.csv`, row `all`; 1 = exact).")


def _ordered(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """``table``'s rows in the arms' order then by LR, indexed by (arm label, LR as written)."""
    rank = {arm: i for i, arm in enumerate(labels)}
    rows = table.assign(rank=table["arm"].map(rank)).sort_values(["rank", "lr"])
    return rows.assign(arm=rows["arm"].map(labels), LR=rows["lr"].map(format_lr)).set_index(["arm", "LR"])


def _rates_view(rates: pd.DataFrame, labels: dict[str, str], alpha: float) -> pd.DataFrame:
    """Per (arm, LR): runs judged, blow-ups, rate with its CI, perplexity median/min/max."""
    view = _ordered(rates, labels)
    out = view[["n", "blowups", "rate"]].copy()
    out[f"{1 - alpha:.0%} CI (Clopper–Pearson)"] = [
        "–" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]"
        for lo, hi in zip(view["ci_low"], view["ci_high"])]
    for key in ("ppl_median", "ppl_min", "ppl_max"):
        out[key.replace("ppl_", "perplexity ")] = view[key]
    return out


def _blowup_k(e: EdgeResults) -> float | None:
    """The k of "perplexity > k × base" the edges used, from the rates' threshold / base."""
    ratio = (e.rates["threshold"] / e.rates["base"]).dropna()
    return float(ratio.iloc[0]) if len(ratio) else None


def _arms_view(e: EdgeResults, labels: dict[str, str]) -> pd.DataFrame:
    """Per arm: the edge in words and the LR sensitivity with its best LR."""
    edges, sens = e.edges.set_index("arm"), e.sensitivity.set_index("arm")
    base = e.base_edges.set_index("arm")
    k = f"edge ({format_number(r_k)}× base)" if (r_k := _blowup_k(e)) else "edge"
    rows = []
    for arm, label in labels.items():
        row = {"arm": label, k: "–", "edge (worse than base)": "–", "LR sensitivity (nats)": float("nan"),
               "best LR": "–"}
        if arm in edges.index:
            row[k] = prose_edge.edge_interval(edges.loc[arm])
        if arm in base.index:
            row["edge (worse than base)"] = prose_edge.edge_interval(base.loc[arm])
        if arm in sens.index:
            row["LR sensitivity (nats)"] = sens.loc[arm, "sensitivity"]
            row["best LR"] = format_lr(sens.loc[arm, "best_lr"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def _at_end_view(at_end: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Per (arm, LR): the last traced step's inflation (median [min, max] over trials), the
    median stored/exact second moment and the 8-bit top-code share."""
    view = _ordered(at_end, labels)
    out = view[["n", "last_step", "update_inflation_median"]].copy()
    out["update_inflation [min, max]"] = [
        format_interval(lo, hi)
        for lo, hi in zip(view["update_inflation_min"], view["update_inflation_max"])]
    out["v_ratio_median (median)"] = view["v_ratio_median_median"]
    out["v_top_code_fraction (median)"] = view["v_top_code_fraction_median"]
    return out


def _figures(doc: Doc, e: EdgeResults, labels: dict[str, str]) -> None:
    if not e.curves.empty:
        doc.figure("lr_edge_inflation", plots_edge.inflation_vs_step(e.curves, labels),
                   "Update inflation against the optimizer step, one line per LR (median over "
                   "trials, band from min to max); 1 = exact fp32 AdamW")


def lr_edge(doc: Doc, e: EdgeResults | None, r: Results) -> Tables:
    """Where each arm tips over as the learning rate grows; nothing without an LR axis (``e`` None)."""
    if e is None:
        return {}
    doc.heading("Learning-rate edge")
    if e.rates.empty:
        doc.para("The study has a learning-rate axis, but no finished run with a recorded LR yet.")
        return {}
    labels = prose_edge.arm_labels(e.rates)
    doc.para("The answer and its figure open the report (*Answer*); the evidence follows.")
    doc.para(MECHANISM)
    _definitions(doc, r.config)
    arms = _arms_view(e, labels)
    doc.table(arms, "Edge per arm, as the interval between the last LR of the grid below and the first "
              f"at which at least {EDGE_RATE:.0%} of the runs blew up, and LR sensitivity")
    doc.table(_rates_view(e.rates, labels, r.config.alpha), "Blow-ups and perplexity per arm and LR")
    out: Tables = {"lr_edge_rates": (e.rates, "Blow-ups per arm and learning rate"),
                   "lr_edge_edges": (e.edges, "Learning-rate edge per arm"),
                   "lr_edge_edges_worse_than_base": (e.base_edges, ("Learning-rate edge per arm, blow-up = "
                                                     "worse than the untrained base model")),
                   "lr_edge_ratios": (e.ratios, "Ratio of edges per pair of arms"),
                   "lr_edge_sensitivity": (e.sensitivity, "LR sensitivity per arm")}
    if not e.at_end.empty:
        doc.table(_at_end_view(e.at_end, labels), "Optimizer trace at the last step, per arm and LR")
        out["lr_edge_inflation_at_end"] = (e.at_end, "Optimizer trace at the last step")
    if not e.horizon.empty:
        doc.table(e.horizon, "Long runs beside the grid: update inflation (median over trials) at "
                  "step 200 and at the last step, and the mechanism's block-max prediction")
        out["lr_edge_horizon"] = (e.horizon, "Long runs: update inflation and the mechanism's prediction")
    _figures(doc, e, labels)
    return out


LR_EDGE: Section[EdgeResults | None] = Section("lr_edge", present=lr_edge,
                                               compute=lambda r: compute_edge(r.study, r.config))
