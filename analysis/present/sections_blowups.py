"""The report's sections on blow-ups, equivalence between arms, and this study next to others
(e.g. the paper's imported Tables 1–2 next to the harness's own runs). Same conventions as
:mod:`analysis.present.sections`: the numbers are core ones (:class:`~analysis.compute.results.Results`:
the Answer and the headline quote them too).
"""

from __future__ import annotations

import pandas as pd

from analysis.compute.results import Results
from analysis.config import AnalysisConfig
from analysis.present import prose, verdict_words
from analysis.present.document import Doc
from analysis.present.formatting import format_number
from analysis.present.section import Section, Tables


def _rates_view(rates: pd.DataFrame) -> pd.DataFrame:
    """The per-arm table as shown: n, blow-ups, rate, exact CI, bimodality."""
    view = rates.set_index("cell")[["n", "blowups", "rate"]].copy()
    view["95% CI (Clopper–Pearson)"] = [
        "–" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]"
        for lo, hi in zip(rates["ci_low"], rates["ci_high"])]
    view["clusters"] = rates["bimodality"].to_numpy()
    return view


def _pairs_view(pairs: pd.DataFrame, config: AnalysisConfig) -> pd.DataFrame:
    """The per-comparison table as shown, one row per pair (X vs Y)."""
    rows = []
    for _, r in pairs.iterrows():
        ci = "" if pd.isna(r["p_x_gt_y_ci_low"]) else \
            f" [{r['p_x_gt_y_ci_low']:.2f}, {r['p_x_gt_y_ci_high']:.2f}]"
        rows.append({"X vs Y": f"{r['x']} vs {r['y']}", "design": r["design"],
                     "blow-ups X / Y": f"{r['blowups_x']}/{r['judged_x']} vs "
                                       f"{r['blowups_y']}/{r['judged_y']}",
                     "t-test n X / Y": f"{r['n_x']} / {r['n_y']}",
                     "Fisher p": prose.p_text(r["fisher_p"]),
                     f"TOST p (±{config.margin * 100:g}%)": prose.p_text(r["tost_p"]),
                     "difference p": f"{prose.p_text(r['diff_p'])} ({r['diff_test']})",
                     "P(X > Y) [95% CI]": f"{r['p_x_gt_y']:.2f}{ci}" if pd.notna(r["p_x_gt_y"])
                     else "–", "verdict": r["verdict"]})
    return pd.DataFrame(rows)


def _explain(doc: Doc, config: AnalysisConfig) -> None:
    margin = verdict_words.margin_text(config)
    doc.para(f"A finished run blew up when it diverged or its token-weighted perplexity exceeds "
             f"k = {format_number(config.blowup_k)} × the reference of its (model, dataset): the "
             "base model's perplexity recorded by the runs, or, when no run recorded one "
             "(imported tables), the pooled median perplexity of all finished runs of that "
             "(model, dataset) across arms. Rate CIs are exact (Clopper–Pearson) 95% intervals; "
             "arms are compared with Fisher's exact test (two-sided). Clusters: an arm's sorted "
             f"log10 perplexities are cut wherever two neighbours are more than "
             f"{format_number(config.gap_decades)} decade(s) apart (a factor of "
             f"{format_number(10 ** config.gap_decades)}).")
    doc.para(f"Equivalence: two one-sided t-tests (TOST) on mean log perplexity with margin "
             f"{margin} (log(1 + {config.margin:g}) = {config.log_margin:.4g} on each side), paired "
             "by trial when the arms are seed-matched, else Welch; the difference test is the "
             "t-test of the same design. Verdict: \"equivalent\" only when TOST p < "
             f"{config.alpha:g}, \"different\" only when the difference p < {config.alpha:g}, "
             "otherwise \"inconclusive\". Runs with a non-finite perplexity are left out of "
             "these t-tests (they count as blow-ups above). P(X > Y): common-language effect "
             f"size, 95% CI by percentile bootstrap ({config.n_resamples} resamples, seed "
             f"{config.seed}; whole pairs resampled when paired).")


def blowups_equivalence(doc: Doc, r: Results) -> Tables:
    """Per arm: blow-up rate with exact CI and clusters; per comparison: Fisher, TOST,
    difference test, P(X > Y) with CI and the verdict in words."""
    doc.heading("Blow-ups and equivalence")
    _explain(doc, r.config)
    refs, rates = r.blowup_references, verdict_words.rates_in_words(r.blowup_rates)
    if refs.empty:
        doc.para("No finished run: nothing to judge.")
        return {}
    doc.para("Reference per (model, dataset):")
    doc.bullets(prose.reference_lines(refs, r.config))
    doc.table(_rates_view(rates), "Blow-ups per arm")
    split = [f"`{row['cell']}`: {row['bimodality']}" for _, row in rates.iterrows()
             if row["n_clusters"] > 1]
    doc.bullets(split)
    out = {"blowup_references": (refs, "Blow-up reference per (model, dataset)"),
           "blowup_rates": (rates, "Blow-ups per arm")}
    pairs = verdict_words.comparisons_in_words(r.equivalence, r.config)
    if pairs.empty:
        doc.para("No two cells differ only in the optimizer: no comparison.")
        return out
    doc.bullets([f"`{row['x']}` vs `{row['y']}`: {row['verdict']}" for _, row in pairs.iterrows()])
    doc.table(_pairs_view(pairs, r.config), "Blow-ups and equivalence per comparison", index=False)
    return out | {"blowup_equivalence": (pairs, "Blow-ups and equivalence per comparison")}


def pooled_view(pooled: pd.DataFrame, studies: list[str]) -> pd.DataFrame:
    """Rows = arm (optimizer[/variant]), columns = study: blow-ups / runs with exact CI, from
    :func:`analysis.compute.blowups.pooled_counts` (arms in its order)."""
    text = pooled.assign(text=[prose.rate_text(int(k), int(n), lo, hi) for k, n, lo, hi in zip(
        pooled["blowups"], pooled["n"], pooled["ci_low"], pooled["ci_high"])])
    table = text.pivot(index="arm", columns="study", values="text")
    table = table.reindex(index=list(dict.fromkeys(pooled["arm"])), columns=studies)
    table.index.name, table.columns.name = "arm", None
    return table.fillna("no such arm")


def side_by_side(doc: Doc, r: Results) -> Tables:
    """This study's cells and those of ``--compare``'s in one table, and blow-up rates per arm."""
    if not r.others:
        return {}
    doc.heading("Side by side with other studies")
    names = ", ".join(f"`{s.name}` ({s.path})" for s in r.others)
    doc.para(f"This study (`{r.study.name}`) next to {names}. Each study's blow-ups are judged "
             "against its own references (see *Blow-ups and equivalence*; k = "
             f"{format_number(r.config.blowup_k)}); n = finished runs judged; median/min/max of "
             "the token-weighted perplexity over finished runs with a finite value.")
    cells = r.compare_cells
    view = cells[["cell", "study", "source", "n", "median", "min", "max"]].copy()
    view["blow-up rate [95% CI]"] = [prose.rate_text(b, n, lo, hi) for b, n, lo, hi in zip(
        cells["blowups"], cells["n"], cells["ci_low"], cells["ci_high"])]
    doc.table(view, "Cells of every study, with their blow-up rates", index=False)
    pooled = pooled_view(r.compare_pooled, list(dict.fromkeys(cells["study"])))
    doc.table(pooled, "Blow-up rate per optimizer arm, pooled over each study's cells "
              "(blow-ups/runs = rate [exact 95% CI])")
    out = {"compare_cells": (cells, "Cells of every study, with their blow-up rates"),
           "compare_pooled_rates": (pooled, "Blow-up rate per arm, pooled per study")}
    return out | _reproducibility(doc, r)


def _reproducibility(doc: Doc, r: Results) -> Tables:
    """The same trials with the same seeds in both studies: reproducibility beside repeatability."""
    if r.cross_trials.empty:
        doc.para("No trial of this study ran again with the same cell and seeds in the other studies: no "
                 "reproducibility comparison (that needs runs of one protocol on, e.g., two machines).")
        return {}
    doc.heading("Same trials, same seeds: repeatability vs reproducibility", 3)
    doc.para("Runs of two studies that share a cell, a trial and every seed (lora_init, data_order, "
             "dropout) are the same trial run twice — elsewhere (another CPU, another environment). "
             "`rel_diff` = perplexity there / here − 1; adapters equal = the recorded SHA-256 are equal; "
             "curves part = the first logged training step whose losses differ at all. Beside them, "
             "this study's spread between seeds (max/min perplexity − 1 of the cell) and its arm effect "
             "(|geometric-mean ratio − 1| of the cell's comparison): the reproducibility gap is small "
             "only when it is small against these.")
    caption = "Same trials, same seeds, per cell: the largest difference beside the seed spread and arm effect"
    doc.table(r.cross_cells.set_index(["other", "cell"]), caption)
    trials_caption = "Same trials, same seeds, per trial"
    doc.table(r.cross_trials.set_index(["other", "cell", "trial"]), trials_caption)
    machines_caption = "Where each study ran: CPU, torch threads, lock, commits (first digits), runs on a dirty tree"
    doc.table(r.cross_machines.set_index("study"), machines_caption)
    return {"reproducibility_cells": (r.cross_cells, caption),
            "reproducibility_trials": (r.cross_trials, trials_caption),
            "reproducibility_machines": (r.cross_machines, machines_caption)}


BLOWUPS = Section("blowups_equivalence", present=blowups_equivalence)
SIDE_BY_SIDE = Section("side_by_side", present=side_by_side)
