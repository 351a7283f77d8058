"""The report's sections on where the variance comes from, how far apart the adapters are, the
paper's ablations and how many trials a comparison needs. Same conventions as
:mod:`analysis.sections`: each adds to the document and returns the tables to write; a
section whose data the study lacks adds nothing (or one line saying what is missing).
"""

from __future__ import annotations

import pandas as pd

from analysis import ablations as abl
from analysis import adapter_distance, anova, plots_variance, power, stats, variance
from analysis.document import Doc
from analysis.load import FINISHED, Study
from analysis.sections import Tables, _values
from analysis.tables import format_number
from repeatability.summary import COLUMNS as S


def _ci_text(low: pd.Series, high: pd.Series) -> list[str]:
    return [f"[{format_number(lo)}, {format_number(hi)}]" for lo, hi in zip(low, high)]


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


def _where(study: Study) -> str:
    done = study.runs[study.runs["status"].isin(FINISHED)]
    return f"on this machine ({_values(done, (S.device.type, S.device.name))})"


def _ofat(doc: Doc, study: Study, table: pd.DataFrame) -> Tables:
    doc.heading("One seed source at a time", 3)
    doc.para("Each `vary-*` cell lets one seed source follow the trial (read from the runs' "
             "`seeds.rules`: the source whose rule is `trial`) and fixes every other; the "
             "all-fixed cell is the floor. Variance = sample variance (n−1) across the cell's "
             "finished trials; component = variance − floor (clipped at 0; the floor is its own "
             "component); share = component / sum of components. For the adapter, variance = "
             "tr(Cov(ΔW)) / mean ||ΔW||²_F from pairwise distances of ΔW = s·B·A. 95% CIs: "
             "percentile bootstrap, 9,999 resamples of each cell's trials independently; with 3 "
             "trials per cell they are rough ranges.")
    doc.bullets(variance.answer(table, where=_where(study)))
    doc.figure("variance_sources", plots_variance.variance_sources(table),
               "Left: std of log perplexity across trials when only one seed source varies "
               "(whiskers: bootstrap 95% CI; dashed: the all-fixed floor). Right: each source's "
               "share of the variance of log perplexity, final losses and the adapter update")
    for group, rows in table.groupby("group", sort=True):
        doc.table(_ofat_view(rows), f"One-factor-at-a-time components, `{group}`")
    return {"variance_ofat": (table, "One-factor-at-a-time variance components")}


def _anova(doc: Doc, study: Study, results: list) -> Tables:
    doc.heading("Crossed design (ANOVA, trial as block)", 3)
    doc.para("Type-2 ANOVA (statsmodels OLS) of each response on the crossed factors, their "
             "interaction and the trial (a block: every cell of a trial got the same seeds, so "
             "the trial term is all seed sources together). eta2 = SS / total SS (the term's "
             "share of the variance); partial_eta2 = SS / (SS + residual SS), 95% CI by "
             "inverting the noncentral F. Only trials finished with a finite value in every "
             "cell are used.")
    out: Tables = {}
    designs = list(dict.fromkeys(design for design, _, _ in results))
    doc.bullets([d.describe(study.runs) for d in designs])
    for design, label, table in results:
        k = designs.index(design) + 1
        caption = f"ANOVA of {label}, `{design.group}` design {k}"
        doc.table(table.set_index("term"), caption)
        out[f"anova_{k}_{label.replace(' ', '_')}"] = (table, caption)
    doc.figure("variance_anova", plots_variance.anova_shares(
        [(f"{d.group} ({' × '.join(d.factors)})", label, t) for d, label, t in results]),
        "Crossed designs: each term's share (η²) of the total sum of squares")
    return out


def variance_sources(doc: Doc, study: Study) -> Tables:
    """"Where does the variance come from?": OFAT components (vary-* cells) and the ANOVA of
    crossed designs; nothing when the study has neither."""
    pairs = adapter_distance.pair_table(study.runs, study.path)
    table = variance.decompose(study.runs, pairs)
    results = anova.crossed_anova(study.runs)
    if table.empty and not results:
        return {}
    doc.heading("Where does the variance come from?")
    out: Tables = {}
    if not table.empty:
        out |= _ofat(doc, study, table)
    if results:
        out |= _anova(doc, study, results)
    return out


def _arm_divergence(doc: Doc, study: Study) -> Tables:
    """Seed-matched arms (cells differing only in the optimizer): X's adapter vs Y's, per trial."""
    frames = [adapter_distance.arm_pairs(study.runs, study.path, x, y, trials)
              for x, y in stats.comparison_pairs(study.runs)
              if (trials := stats.paired_trials(study.runs, x, y))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return {}
    arms = pd.concat(frames, ignore_index=True)
    doc.para("Between seed-matched arms (same trial, same seeds, another optimizer), the "
             "difference is the arm's own effect on the weights:")
    doc.bullets([f"`{pair}`: relative L2 {g['rel_l2'].mean():.3g} (min {g['rel_l2'].min():.3g}, "
                 f"max {g['rel_l2'].max():.3g}), cosine {g['cosine'].mean():.4g} over "
                 f"{len(g)} trial(s)" for pair, g in arms.groupby("cell", sort=True)])
    return {"divergence_arms": (arms, "Adapter divergence between seed-matched arms, per trial")}


def adapter_divergence(doc: Doc, study: Study) -> Tables:
    """Pairwise relative L2 distance and cosine similarity of ΔW between a cell's trials."""
    doc.heading("Adapter divergence")
    pairs = adapter_distance.pair_table(study.runs, study.path)
    if pairs.empty:
        doc.para("No cell has two finished runs whose adapters hold lora_A/lora_B weight pairs: "
                 "nothing to compare.")
        return {}
    doc.para("Per LoRA module, ΔW = s·B·A with s = lora_alpha / r from `adapter_config.json`. "
             "Relative L2 distance = ||ΔW_i − ΔW_j||_F / mean(||ΔW_i||_F, ||ΔW_j||_F) (0: same "
             "update; √2: orthogonal updates of equal size); cosine = <ΔW_i, ΔW_j>_F / "
             "(||ΔW_i||_F ||ΔW_j||_F). Whole adapter = every module's ΔW concatenated.")
    summary = adapter_distance.cell_summary(pairs)
    doc.bullets([f"`{r['cell']}`: {r['n_adapters']} adapters, {r['n_pairs']} pair(s) "
                 f"({r['n_identical_pairs']} identical): relative L2 {r['rel_l2_mean']:.3g} "
                 f"(min {r['rel_l2_min']:.3g}, max {r['rel_l2_max']:.3g}), cosine "
                 f"{r['cosine_mean']:.4g} (min {r['cosine_min']:.4g}); mean ||ΔW||_F "
                 f"{r['mean_norm']:.4g}; most divergent module kind: {r['most_divergent_kind']}"
                 for _, r in summary.iterrows()])
    doc.table(summary.set_index("cell"), "Adapter divergence per cell (whole adapter)")
    out = _arm_divergence(doc, study)
    layers = adapter_distance.by_layer(pairs)
    if (layers["layer"] >= 0).any():
        doc.figure("divergence_by_layer", plots_variance.divergence_by_layer(layers),
                   "Relative L2 distance of ΔW between trials, per transformer layer")
    whole = adapter_distance.whole_adapter(pairs)
    kinds = adapter_distance.aggregate(pairs, ["cell", "kind", "trial_i", "trial_j"])
    return out | {"divergence_cells": (summary, "Adapter divergence per cell"),
            "divergence_pairs": (whole, "Adapter divergence per trial pair (whole adapter)"),
            "divergence_layers": (layers, "Adapter divergence per layer"),
            "divergence_kinds": (kinds, "Adapter divergence per module kind and trial pair")}


def ablations(doc: Doc, study: Study) -> Tables:
    """(a) K samples at low temperature under different seeds vs greedy; (b) base-model
    perplexity scored K times. Nothing when no run recorded either."""
    per_prompt = abl.sampling(study.generations) if not study.generations.empty else pd.DataFrame()
    base = abl.base_repeats(study.runs)
    if per_prompt.empty and base.empty:
        return {}
    doc.heading("Ablations")
    out: Tables = {}
    if not per_prompt.empty:
        cells = abl.sampling_by_cell(per_prompt)
        doc.para("(a) The same adapter sampled K times (temperature / top-p as recorded) under "
                 "different generation seeds, against its greedy completion:")
        doc.bullets([abl.sampling_line(row) for _, row in cells.iterrows()])
        doc.table(cells.set_index("cell"), "Ablation (a): sampled vs greedy, per cell")
        out["ablation_sampling"] = (per_prompt, "Ablation (a) per run and prompt")
    doc.para(abl.base_statement(base))
    if not base.empty:
        out["ablation_base_repeats"] = (base, "Ablation (b): base perplexity repeats per run")
    return out


def trials_needed(doc: Doc, study: Study) -> Tables:
    """Trials per arm to detect a 5/10/50% perplexity difference, from each cell's spread."""
    table = power.trials_needed(study.runs)
    if table.empty:
        return {}
    doc.heading("How many trials are needed")
    doc.para(f"From each cell's observed std σ of log perplexity: the trials per arm a two-sided "
             f"two-sample t-test (statsmodels TTestIndPower) needs to detect a difference δ = "
             f"log(ratio) in mean log perplexity at α = {power.ALPHA:g} and power {power.POWER:g} "
             "(effect size δ/σ). σ from a few trials is uncertain: the second number uses the "
             "upper end of σ's 95% χ² interval.")
    doc.bullets([power.reading(row) for _, row in table.iterrows()])
    doc.table(table.set_index("cell"), "Trials per arm needed (n_<ratio>: at σ; _ci_high: at "
              "σ's upper 95% bound)")
    return {"trials_needed": (table, "Trials per arm needed")}
