"""The learning-rate edge in words: sentences built from :class:`analysis.compute.lr_edge.EdgeResults`
(nothing here computes a statistic; same role as :mod:`analysis.present.prose`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.compute.lr_edge import EDGE_RATE, PAPER_LR, EdgeResults, arm_order
from analysis.present.formatting import format_lr
from analysis.present.labels import SEP, optim_words, unique_or, variant_words


def arm_labels(table: pd.DataFrame) -> dict[str, str]:
    """Arm → the name the report uses, in :func:`analysis.compute.lr_edge.arm_order`: the optimizer in
    words (:func:`analysis.present.labels.optim_words`, `` · variant`` when there is one) when the study has
    one (model, dataset) and no two arms' words are alike, else as named (``optim/variant``);
    the arm itself with several (model, dataset)."""
    first = table.drop_duplicates("arm").set_index("arm")
    if len(first[["model", "dataset"]].drop_duplicates()) > 1:
        return {a: a for a in arm_order(table)}
    named = {a: (first.loc[a, "optim"] + (f"/{first.loc[a, 'variant']}" if first.loc[a, "variant"] else ""))
             for a in arm_order(table)}
    return unique_or({a: SEP.join(w for w in (optim_words(first.loc[a, "optim"]),
                                              variant_words(first.loc[a, "variant"] or "")) if w)
                      for a in named}, named)


def _g(value: float) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.3g}"


def rate_ci(blowups: int, n: int, low: float, high: float) -> str:
    """``1/3 [1%, 91%]``; ``0/0`` when no run was judged."""
    return f"{blowups}/{n} [{low:.0%}, {high:.0%}]" if n else "0/0"


def edge_interval(row: pd.Series) -> str:
    """An arm's edge as the interval the grid allows: ``(2e-4, 1e-3]``, ``(1e-2, ∞)``, ``(0, 1e-4]``."""
    low = "0" if not row["edge_low"] else format_lr(row["edge_low"])
    return f"({low}, ∞)" if row["beyond"] else f"({low}, {format_lr(row['edge_high'])}]"


def edge_phrase(row: pd.Series, label: str) -> str:
    """One arm's edge (a row of :func:`analysis.compute.lr_edge.edges`) as an interval, with the
    blow-ups at both ends."""
    below = f"{row['below_blowups']}/{row['below_n']} at {format_lr(row['edge_low'])}" if row["below_n"] else ""
    if row["beyond"]:
        return (f"`{label}` in {edge_interval(row)} (no LR up to {format_lr(row['largest_lr'])} "
                f"reached {EDGE_RATE:.0%} blow-ups; {below})")
    return (f"`{label}` in {edge_interval(row)} ({row['edge_blowups']}/{row['edge_n']} blew up at "
            f"{format_lr(row['edge'])}" + (f", {below})" if below else ")"))


def base_edge_phrase(edges: pd.DataFrame, labels: dict[str, str]) -> str:
    """The edges when a run counts as blown up as soon as it ends worse than the untrained base
    model (:data:`analysis.compute.lr_edge.BASE_K`), beside the k × base ones."""
    parts = [f"`{label}` {edge_interval(edges.loc[a])}" for a, label in labels.items() if a in edges.index]
    return ("Worse than the untrained base model in at least half of the runs: " + "; ".join(parts) + "."
            if parts else "")


def ratio_phrase(row: pd.Series, labels: dict[str, str]) -> str:
    """One pair of :func:`analysis.compute.lr_edge.edge_ratios`: edge of y / edge of x, or its bound."""
    head = f"edge of `{labels[row['y']]}` / edge of `{labels[row['x']]}`"
    high = "∞" if not math.isfinite(row["ratio_high"]) else _g(row["ratio_high"])
    interval = f"in ({_g(row['ratio_low'])}, {high})"
    if pd.notna(row["ratio"]):
        return f"{head} {interval} (grid points: {_g(row['ratio'])})"
    if pd.notna(row["ratio_lower_bound"]):
        return f"{head} {interval} (`{labels[row['y']]}`'s lies beyond the grid)"
    if pd.notna(row["ratio_upper_bound"]):
        return f"{head} {interval} (`{labels[row['x']]}`'s lies beyond the grid)"
    return f"{head}: unknown (both lie beyond the grid)"


def inflation_phrase(at_end: pd.DataFrame, labels: dict[str, str], lr: float = PAPER_LR) -> str:
    """Update inflation at the last step (median over trials) at ``lr``, and its largest median
    over the grid, per arm (:func:`analysis.compute.lr_edge.inflation_at_end`)."""
    if at_end.empty:
        return ("No finished run recorded an optimizer trace (`diagnostics.optimizer_trace=true`): "
                "no update inflation.")
    at_lr, largest = [], []
    for arm, label in labels.items():
        rows = at_end[(at_end["arm"] == arm) & at_end["update_inflation_median"].notna()]
        if rows.empty:
            continue
        here = rows[np.isclose(rows["lr"], lr, rtol=1e-9, atol=0)]
        at_lr.append(f"`{label}` " + (_g(here["update_inflation_median"].iloc[0]) if len(here)
                                      else "not run"))
        top = rows.loc[rows["update_inflation_median"].idxmax()]
        largest.append(f"`{label}` {_g(top['update_inflation_median'])} (LR {format_lr(top['lr'])})")
    if not at_lr:
        return "The optimizer traces hold no update inflation."
    return (f"Update inflation at the last step (applied update / exact fp32 AdamW's, median over "
            f"trials) at the paper's LR {format_lr(lr)}: {', '.join(at_lr)}; largest over the grid: "
            f"{', '.join(largest)}.")


def sensitivity_phrase(sensitivity: pd.DataFrame, labels: dict[str, str]) -> str:
    """Per arm of :func:`analysis.compute.lr_edge.lr_sensitivity`: its value and best LR."""
    rows = sensitivity.set_index("arm")
    parts = [f"`{label}` {_g(rows.loc[arm, 'sensitivity'])}"
             + (f" (best LR {format_lr(rows.loc[arm, 'best_lr'])})"
                if pd.notna(rows.loc[arm, "best_lr"]) else "")
             for arm, label in labels.items() if arm in rows.index]
    return ("LR sensitivity (Wortsman et al. 2023: mean over the grid of min(log perplexity, log "
            f"base) − its best, in nats): {', '.join(parts)}.")


def blowups_phrase(rates: pd.DataFrame, labels: dict[str, str], alpha: float) -> str:
    """Blow-ups per arm at each LR as k/n with the exact CI (:func:`analysis.compute.lr_edge.rates`)."""
    arms = []
    for arm, label in labels.items():
        rows = rates[rates["arm"] == arm].sort_values("lr")
        arms.append(f"`{label}`: " + ", ".join(
            f"{format_lr(r['lr'])} {rate_ci(int(r['blowups']), int(r['n']), r['ci_low'], r['ci_high'])}"
            for _, r in rows.iterrows()))
    return f"Blow-ups per LR, k/n [exact {1 - alpha:.0%} CI]: " + "; ".join(arms) + "."


def answer_lines(e: EdgeResults, labels: dict[str, str], alpha: float) -> list[str]:
    """The answer, one line per finding: edges and their ratios, where the paper's LR sits, update
    inflation, the long runs, LR sensitivity and blow-ups per LR, every number from ``e``."""
    edges = e.edges.set_index("arm")
    head = ("Edge (between the last LR of the grid below and the first at which at least "
            f"{EDGE_RATE:.0%} of the runs blew up): "
            + "; ".join(edge_phrase(edges.loc[a], label) for a, label in labels.items()
                        if a in edges.index) + ".")
    if len(e.ratios):
        head += " Ratio of edges: " + "; ".join(ratio_phrase(r, labels) for _, r in e.ratios.iterrows()) + "."
    lines = [head, base_edge_phrase(e.base_edges.set_index("arm"), labels), paper_phrase(e, labels),
             inflation_phrase(e.at_end, labels), horizon_phrase(e.horizon), explains_phrase(e, labels),
             sensitivity_phrase(e.sensitivity, labels), blowups_phrase(e.rates, labels, alpha)]
    return [line for line in lines if line]


def answer(e: EdgeResults, labels: dict[str, str], alpha: float) -> str:
    """:func:`answer_lines` as one paragraph."""
    return "Answer. " + " ".join(answer_lines(e, labels, alpha))


PAPER_8BIT_BLOWUPS = (22, 28)  # Alahmari et al. 2024, Tables 1-2 (experiments/paper_tables_1_2.csv), 8-bit arm


def _arm_label(arm: str) -> str:
    """An arm outside the grid by its optimizer and variant, in words (``8-bit · horizon``)."""
    parts = arm.split("__")[2:] + [""]
    return SEP.join(w for w in (optim_words(parts[0]), variant_words(parts[1])) if w)


def horizon_phrase(h: pd.DataFrame) -> str:
    """The long runs beside the grid (:func:`analysis.compute.lr_edge.horizon`): measured inflation at
    step 200 and at the end, and the mechanism's prediction, labelled as such."""
    if h.empty:
        return ""
    parts = [f"`{_arm_label(r['arm'])}` (LR {format_lr(r['lr'])}, {r['n']} trial(s)) "
             f"{_g(r['inflation_at_200'])} at step 200 and {_g(r['inflation_last'])} at step "
             f"{r['last_step']} (top-code share {_g(r['top_code_last'])}); held-out perplexity "
             f"{_g(r['perplexity_median'])}, {r['blowups']}/{r['judged']} blew up" for _, r in h.iterrows()]
    p = h.iloc[h["last_step"].argmax()]
    return ("Long run, update inflation (median over trials): " + "; ".join(parts) + ". The "
            "mechanism's prediction for a block's largest element under the 0.41.0 map (formula, not "
            f"measured): {_g(p['predicted_at_200'])} at step 200, {_g(p['predicted_last'])} at step "
            f"{p['last_step']}, and, extrapolated to the paper's ~6,000 steps, {_g(p['predicted_at_6000'])}.")


def explains_phrase(e: EdgeResults, labels: dict[str, str], lr: float = PAPER_LR) -> str:
    """What the runs at the paper's LR say about the paper's 8-bit blow-ups, and what they cannot:
    blow-ups per arm over the grid's steps and over the long runs' steps, at that LR."""
    k, n = PAPER_8BIT_BLOWUPS
    at = e.rates[np.isclose(e.rates["lr"], lr, rtol=1e-9, atol=0)].set_index("arm")
    grid = [f"`{label}` {int(at.loc[a, 'blowups'])}/{int(at.loc[a, 'n'])}" for a, label in labels.items()
            if a in at.index]
    long = [f"`{_arm_label(r['arm'])}` {r['blowups']}/{r['judged']} over {r['last_step']} steps"
            for _, r in e.horizon.iterrows() if np.isclose(r["lr"], lr, rtol=1e-9, atol=0)]
    if not grid and not long:
        return ""
    in_grid = e.at_end[e.at_end["arm"].isin(set(e.rates["arm"]))]
    steps = int(in_grid["last_step"].max()) if len(in_grid) else None
    return (f"Against the paper's {k}/{n} 8-bit blow-ups: at its LR {format_lr(lr)}, blow-ups "
            + (f"over the grid's {steps} steps: " if steps else "in the grid: ") + ", ".join(grid)
            + ("; in the long runs: " + "; ".join(long) if long else "")
            + ". Not covered by these runs: the fused CUDA kernel, 7B–20B models, fp16 compute and the paper's "
            "~6,000 steps — the paper's own cells on a GPU test those (command below).")


def paper_phrase(e: EdgeResults, labels: dict[str, str], lr: float = PAPER_LR) -> str:
    """Where the paper's LR sits against each arm's edge, and the blow-ups there beside the
    paper's 8-bit 22/28."""
    edges, parts = e.edges.set_index("arm"), []
    for arm, label in labels.items():
        if arm not in edges.index:
            continue
        row = edges.loc[arm]
        at = e.rates[(e.rates["arm"] == arm) & np.isclose(e.rates["lr"], lr, rtol=1e-9, atol=0)]
        here = f"{int(at['blowups'].iloc[0])}/{int(at['n'].iloc[0])} blew up at it" if len(at) else "not run at it"
        where = (f"edge beyond the grid (> {format_lr(row['largest_lr'])}, {_g(row['largest_lr'] / lr)}× the "
                 "paper's LR)" if row["beyond"]
                 else f"{_g(row['edge'] / lr)}× below its edge ({format_lr(row['edge'])})" if row["edge"] > lr
                 else f"at or above its edge ({format_lr(row['edge'])})")
        parts.append(f"`{label}`: {where}, {here}")
    k, n = PAPER_8BIT_BLOWUPS
    return (f"The paper's LR {format_lr(lr)} (Alahmari et al. 2024, whose 8-bit runs blew up {k}/{n} "
            f"times over ~6,000 steps of 7B-20B models): " + "; ".join(parts) + ".")
