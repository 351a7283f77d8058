"""The report's sections on where the variance comes from, how far apart the adapters are (the
adapter distance), the paper's ablations and how many trials a comparison needs. Same
conventions as :mod:`analysis.present.sections`: each computes the numbers only it reads (its
:class:`~analysis.present.section.Section`: :data:`SOURCES`, :data:`ADAPTERS`, :data:`ABLATIONS`,
:data:`TRIALS_NEEDED`), presents them and returns the tables to write; a section whose data the study
lacks adds nothing (or one line saying what is missing).
"""

from __future__ import annotations

import pandas as pd

from analysis.compute import ablations as ablation
from analysis.compute import adapter_distance as distance
from analysis.compute import power, variance
from analysis.compute.results import Results
from analysis.load import FINISHED
from analysis.present import plots_variance, prose
from analysis.present.document import Doc
from analysis.present.formatting import format_interval, format_number
from analysis.present.section import Section, Tables
from analysis.present.sections import _values
from repeatability.records.summary import COLUMNS as S


def _ci_text(low: pd.Series, high: pd.Series) -> list[str]:
    return [format_interval(lo, hi) for lo, hi in zip(low, high)]


def _ofat_view(table: pd.DataFrame) -> pd.DataFrame:
    """The OFAT table as shown: one row per (metric, source), CIs as ranges."""
    view = table.set_index(["metric", "source"])
    out = view[["cell", "n", "mean", "std"]].copy()
    out["std 95% CI"] = _ci_text(view["std_ci_low"], view["std_ci_high"])
    out["variance"] = view["variance"]
    out["component"] = view["component"]
    out["share"] = view["share"]
    out["share 95% CI"] = _ci_text(view["share_ci_low"], view["share_ci_high"])
    return out


def where(runs: pd.DataFrame) -> str:
    """Where the runs ran, in words: ``on this machine (cpu / AMD EPYC)``."""
    done = runs[runs["status"].isin(FINISHED)]
    return f"on this machine ({_values(done, (S.device.type, S.device.name))})"


def _ofat(doc: Doc, runs: pd.DataFrame, table: pd.DataFrame) -> Tables:
    doc.heading("One seed source at a time", 3)
    doc.para("Each `vary-*` cell lets one seed source follow the trial (read from the runs' "
             "`seeds.rules`: the source whose rule is `trial`) and fixes every other; the "
             "all-fixed cell is the floor. Variance = sample variance (n−1) across the cell's "
             "finished trials; component = variance − floor (clipped at 0; the floor is its own "
             "component); share = component / sum of components. For the adapter, variance = "
             "tr(Cov(ΔW)) / mean ||ΔW||²_F from pairwise distances of ΔW = s·B·A. 95% CIs: "
             "percentile bootstrap, 9,999 resamples of each cell's trials independently; with 3 "
             "trials per cell they are rough ranges.")
    doc.bullets(prose.variance_answer(table, where=where(runs)))
    doc.figure("variance_sources", plots_variance.variance_sources(table),
               "Left: std of log perplexity across trials when only one seed source varies "
               "(whiskers: bootstrap 95% CI; dashed: the all-fixed floor). Right: each source's "
               "share of the variance of log perplexity, final losses and the adapter update")
    for group, rows in table.groupby("group", sort=True):
        doc.table(_ofat_view(rows), f"One-factor-at-a-time components, `{group}`")
    return {"variance_ofat": (table, "One-factor-at-a-time variance components")}


def _anova(doc: Doc, runs: pd.DataFrame, results: list) -> Tables:
    doc.heading("Crossed design (ANOVA, trial as block)", 3)
    doc.para("Type-2 ANOVA (statsmodels OLS) of each response on the crossed factors, their "
             "interaction and the trial (a block: every cell of a trial got the same seeds, so "
             "the trial term is all seed sources together). eta2 = SS / total SS (the term's "
             "share of the variance); partial_eta2 = SS / (SS + residual SS), 95% CI by "
             "inverting the noncentral F. Only trials finished with a finite value in every "
             "cell are used.")
    out: Tables = {}
    designs = list(dict.fromkeys(design for design, _, _ in results))
    doc.bullets([prose.design_line(d, runs) for d in designs])
    for design, label, table in results:
        k = designs.index(design) + 1
        caption = f"ANOVA of {label}, `{design.group}` design {k}"
        doc.table(table.set_index("term"), caption)
        out[f"anova_{k}_{label.replace(' ', '_')}"] = (table, caption)
    doc.figure("variance_anova", plots_variance.anova_shares(
        [(f"{d.group} ({' × '.join(d.factors)})", label, t) for d, label, t in results]),
        "Crossed designs: each term's share (η²) of the total sum of squares")
    return out


def variance_sources(doc: Doc, v: variance.VarianceSources, r: Results) -> Tables:
    """"Where does the variance come from?": OFAT components (vary-* cells) and the ANOVA of
    crossed designs; nothing when the study has neither."""
    if v.ofat.empty and not v.anova:
        return {}
    doc.heading("Where does the variance come from?")
    out: Tables = {}
    if not v.ofat.empty:
        out |= _ofat(doc, r.study.runs, v.ofat)
    if v.anova:
        out |= _anova(doc, r.study.runs, v.anova)
    return out


def _arm_distance(doc: Doc, arms: pd.DataFrame) -> Tables:
    """Seed-matched arms (cells differing only in the optimizer): X's adapter vs Y's, per trial."""
    if arms.empty:
        return {}
    doc.para("Between seed-matched arms (same trial, same seeds, another optimizer), the "
             "difference is the arm's own effect on the weights:")
    doc.bullets([f"`{pair}`: relative L2 {g['rel_l2'].mean():.3g} (min {g['rel_l2'].min():.3g}, "
                 f"max {g['rel_l2'].max():.3g}), cosine {g['cosine'].mean():.4g} over "
                 f"{len(g)} trial(s)" for pair, g in arms.groupby("cell", sort=True)])
    return {"adapter_distance_arms": (arms, "Adapter distance between seed-matched arms, per trial")}


def _cell_lines(summary: pd.DataFrame) -> list[str]:
    return [f"`{r['cell']}`: {r['n_adapters']} adapters, {r['n_pairs']} pair(s) "
            f"({r['n_identical_pairs']} identical): relative L2 {r['rel_l2_mean']:.3g} "
            f"(min {r['rel_l2_min']:.3g}, max {r['rel_l2_max']:.3g}), cosine "
            f"{r['cosine_mean']:.4g} (min {r['cosine_min']:.4g}); mean ||ΔW||_F "
            f"{r['mean_norm']:.4g}; module kind farthest apart: {r['farthest_kind']}"
            for _, r in summary.iterrows()]


def adapter_distance(doc: Doc, a: distance.AdapterResults, r: Results) -> Tables:
    """Pairwise relative L2 distance and cosine similarity of ΔW between a cell's trials."""
    doc.heading("Adapter distance")
    if r.adapter_pairs.empty:
        if a.not_kept:
            doc.para(f"Adapter weights not kept: {a.not_kept} finished run(s) recorded their "
                     "adapter's SHA-256 (summary and manifest) but the weights are not in this copy of the "
                     "study (a published study ships its run records, not its adapters); distances need "
                     "the weights, so none is computed.")
        doc.para("No cell has two finished runs whose adapters hold lora_A/lora_B weight pairs: "
                 "nothing to compare.")
        return {}
    doc.para("Per LoRA module, ΔW = s·B·A with s = lora_alpha / r from `adapter_config.json`. "
             "Relative L2 distance = ||ΔW_i − ΔW_j||_F / mean(||ΔW_i||_F, ||ΔW_j||_F) (0: same "
             "update; √2: orthogonal updates of equal size); cosine = <ΔW_i, ΔW_j>_F / "
             "(||ΔW_i||_F ||ΔW_j||_F). Whole adapter = every module's ΔW concatenated.")
    doc.bullets(_cell_lines(a.cells))
    doc.table(a.cells.set_index("cell"), "Adapter distance per cell (whole adapter)")
    out = _arm_distance(doc, a.arms)
    if (a.layers["layer"] >= 0).any():
        doc.figure("adapter_distance_by_layer", plots_variance.adapter_distance_by_layer(a.layers),
                   "Relative L2 distance of ΔW between trials, per transformer layer")
    return out | {
        "adapter_distance_cells": (a.cells, "Adapter distance per cell"),
        "adapter_distance_pairs": (a.whole, "Adapter distance per trial pair (whole adapter)"),
        "adapter_distance_layers": (a.layers, "Adapter distance per layer"),
        "adapter_distance_kinds": (a.kinds, "Adapter distance per module kind and trial pair")}


def _count(flags: pd.Series) -> str:
    known = flags.dropna()
    return f"{int(known.astype(bool).sum())}/{len(known)}" if len(known) else "–"


def sampling_by_cell(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Per cell of :func:`analysis.compute.ablations.sampling`: runs, K (min–max), distinct seeds per
    prompt (min), and the counts of (run, prompt) pairs whose samples are identical and equal to
    greedy, as "i/n"."""
    rows = []
    for cell, group in per_prompt.groupby("cell", sort=True):
        k_lo, k_hi = int(group["k"].min()), int(group["k"].max())
        rows.append({"cell": cell, "runs": int(group["trial"].nunique()),
                     "K": str(k_lo) if k_lo == k_hi else f"{k_lo}–{k_hi}",
                     "min_seeds": int(group["n_seeds"].min()),
                     "temperature / top_p": "; ".join(sorted({
                         f"{format_number(t)} / {format_number(p)}"
                         for t, p in zip(group["temperature"], group["top_p"])})),
                     "samples_identical": _count(group["samples_identical"]),
                     "equal_greedy": _count(group["equal_greedy"])})
    return pd.DataFrame(rows)


def ablations(doc: Doc, a: ablation.AblationResults, r: Results) -> Tables:
    """(a) K samples at low temperature under different seeds vs greedy; (b) base-model
    perplexity scored K times. Nothing when no run recorded either."""
    if a.sampling.empty and a.base_repeats.empty:
        return {}
    doc.heading("Ablations")
    out: Tables = {}
    if not a.sampling.empty:
        doc.para("(a) The same adapter sampled K times (temperature / top-p as recorded) under "
                 "different generation seeds, against its greedy completion:")
        cells = sampling_by_cell(a.sampling)
        doc.bullets([prose.sampling_line(row) for _, row in cells.iterrows()])
        doc.table(cells.set_index("cell"), "Ablation (a): sampled vs greedy, per cell")
        out["ablation_sampling"] = (a.sampling, "Ablation (a) per run and prompt")
    doc.para(prose.base_statement(a.base_repeats))
    if not a.base_repeats.empty:
        out["ablation_base_repeats"] = (a.base_repeats, "Ablation (b): base perplexity repeats per run")
    return out


def trials_needed(doc: Doc, table: pd.DataFrame, r: Results) -> Tables:
    """Trials per arm to detect a 5/10/50% perplexity difference, from each cell's spread (``table``:
    :func:`analysis.compute.power.trials_needed`)."""
    if table.empty:
        return {}
    doc.heading("How many trials are needed")
    doc.para(f"From each cell's observed std σ of log perplexity: the trials per arm a two-sided "
             f"two-sample t-test (statsmodels TTestIndPower) needs to detect a difference δ = "
             f"log(ratio) in mean log perplexity at α = {power.ALPHA:g} and power {power.POWER:g} "
             "(effect size δ/σ). σ from a few trials is uncertain: the second number uses the "
             "upper end of σ's 95% χ² interval.")
    doc.bullets([prose.trials_reading(row) for _, row in table.iterrows()])
    doc.table(table.set_index("cell"), "Trials per arm needed (n_<ratio>: at σ; _ci_high: at "
              "σ's upper 95% bound)")
    return {"trials_needed": (table, "Trials per arm needed")}


SOURCES: Section[variance.VarianceSources] = Section(
    "variance_sources", present=variance_sources,
    compute=lambda r: variance.source_results(r.study.runs, r.adapter_pairs))
ADAPTERS: Section[distance.AdapterResults] = Section(
    "adapter_distance", present=adapter_distance,
    compute=lambda r: distance.adapter_results(r.study, r.adapter_pairs, r.seed_matched))
ABLATIONS: Section[ablation.AblationResults] = Section(
    "ablations", present=ablations, compute=lambda r: ablation.ablation_results(r.study))
TRIALS_NEEDED: Section[pd.DataFrame] = Section(
    "trials_needed", present=trials_needed, compute=lambda r: power.trials_needed(r.study.runs))
