"""The report's present layer: each section adds headings, text, tables and figures to a
:class:`~analysis.present.document.Doc` from the numbers computed once per report (the core
:class:`~analysis.compute.results.Results`, and the section's own: :class:`~analysis.present.section.Section`),
and returns the tables it wants written to ``tables/``. A section computes nothing: it selects,
formats and says in words (:mod:`analysis.present.prose`). This module: the verdict per cell, the
held-out perplexity, the arm comparisons and the appendix (setup and environment).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from analysis.compute import provenance, stats, tables, verdict
from analysis.compute.results import SECOND_METRIC, Results
from analysis.load import FINISHED, column, is_imported
from analysis.present import plots, prose, verdict_words
from analysis.present.document import Doc
from analysis.present.formatting import format_number
from analysis.present.labels import short_labels
from analysis.present.section import Section, Tables
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

# Setup rows: label → summary keys (joined with " / " when several).
SETUP_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base model (resolved)", (S.model.resolved,)),
    ("LoRA r / alpha / dropout / targets", (S.model.lora.r, S.model.lora.alpha,
                                           S.model.lora.dropout, S.model.lora.targets)),
    ("dataset / source / template", (S.data.dataset, S.data.source, S.data.template)),
    ("examples train / val / held-out scored", (S.data.n_train, S.data.n_val,
                                                S.data.n_heldout_scored)),
    ("device", (S.device.type, S.device.name)),
    ("compute dtype", (S.device.compute_dtype,)),
    ("base 4-bit / quant type / double quant", (S.device.quantization.load_in_4bit,
                                                S.device.quantization.quant_type,
                                                S.device.quantization.double_quant)),
    ("optimizer requested: name / bits / paged", (S.optimizer.requested.name,
                                                  S.optimizer.requested.optim_bits,
                                                  S.optimizer.requested.is_paged)),
    ("optimizer class that ran", (S.optimizer.effective.class_,)),
    ("effective state bits", (S.optimizer.effective.bits,)),
    ("fraction of params with 8-bit state", (S.optimizer.effective.state_8bit_param_fraction,)),
    ("paging effective", (S.optimizer.effective.paging_effective,)),
    ("learning rate / steps", (S.optimizer.requested.lr, S.metrics.steps)),
    ("seed policy", (S.seeds.policy,)),
    ("determinism mode / deterministic algorithms / threads",
     (S.determinism.mode, S.determinism.use_deterministic_algorithms,
      S.determinism.torch_num_threads)),
    ("torch / transformers / peft / bitsandbytes",
     ("environment.packages.torch", "environment.packages.transformers",
      "environment.packages.peft", "environment.packages.bitsandbytes")),
    ("git commit / dirty", ("environment.git.commit", "environment.git.dirty")),
)
# Shown only when some run recorded them (newer runs, imported runs).
OPTIONAL_SETUP_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("8-bit state maps requested / in force", (S.optimizer.state_maps.requested,
                                               S.optimizer.state_maps.name)),
    ("precision: compute / mixed / grad scaler", (S.precision.compute_dtype,
                                                  S.precision.mixed_precision,
                                                  S.precision.grad_scaler)),
    ("grad scaler: skipped steps / final loss scale", (S.precision.scaler_skipped_steps,
                                                       S.precision.final_loss_scale)),
    ("imported from", (S.imported.source,)),
    ("citation", (S.imported.citation,)),
)


def _values(rows: pd.DataFrame, keys: Sequence[str]) -> str:
    """Distinct values over the runs, each a " / "-joined tuple of ``keys``; "–" if none."""
    cols = [column(rows, k) for k in keys]
    seen = []
    for i in rows.index:
        parts = [c.loc[i] for c in cols]
        if all(p is None or (not isinstance(p, (list, dict)) and pd.isna(p)) for p in parts):
            continue
        text = " / ".join(format_number(p) if not isinstance(p, (list, dict))
                          else str(p) for p in parts)
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) if seen else "–"


def setup_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows = property, columns = cell: what actually ran (finished runs; all if none)."""
    data = {}
    for cell, group in runs.groupby("cell", sort=True):
        done = group[group["status"].isin(FINISHED)]
        rows = done if len(done) else group
        col = {label: _values(rows, keys) for label, keys in SETUP_ROWS}
        col["seed sources varied across trials"] = (
            ", ".join(verdict.varying_seeds(rows)) or "none") if verdict.recorded_seeds(rows) \
            else "not recorded"
        col |= {label: _values(rows, keys) for label, keys in OPTIONAL_SETUP_ROWS
                if any(k in runs.columns for k in keys)}
        data[cell] = col
    return pd.DataFrame(data)


def environment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows = every ``environment.*`` key, columns = cell, values = distinct values (`;`)."""
    keys = sorted(c for c in runs.columns if c.startswith("environment."))
    data = {cell: {k.removeprefix("environment."): _values(group, (k,)) for k in keys}
            for cell, group in runs.groupby("cell", sort=True)}
    return pd.DataFrame(data)


def overview(doc: Doc, differences: pd.DataFrame, r: Results) -> Tables:
    """The appendix: run counts, the setup that actually ran, the environment and any difference
    inside a cell (``differences``: :func:`analysis.compute.verdict.environment_differences`); columns are
    the cells' short labels (:mod:`analysis.present.labels`, legend in *Answer*)."""
    runs, counts = r.study.runs, r.status_counts
    doc.appendix("Appendix: setup and environment")
    doc.para(f"Study directory: `{r.study.path}`. {len(runs)} run directories in "
             f"{runs['cell'].nunique()} cells; status counts: "
             + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".")
    imported = runs[is_imported(runs)]
    if len(imported):
        doc.para(f"{len(imported)} of {len(runs)} runs were imported from published tables "
                 f"({_values(imported, (S.imported.source,))}), not run here: they record only "
                 "what the source reports (perplexities, and whatever else its table gives); "
                 "their seeds, adapters, loss curves, generations and environment were not "
                 "recorded.")
    doc.heading("Setup: what actually ran", 3)
    doc.para("Read from each run's summary (the optimizer's state as inspected after training, "
             "not the config); several values in one cell are separated by `;`, `–` = not "
             "recorded.")
    labels = short_labels(plots.cell_order(runs))  # in the arms' order, fewer optimizer bits first
    setup = setup_table(runs)
    doc.table(setup[list(labels)].rename(columns=labels), "Setup per cell")
    return ({"setup": (setup, "Setup per cell")} | _fingerprints(doc, r)
            | _environment(doc, runs, differences, labels))


def _fingerprints(doc: Doc, r: Results) -> Tables:
    """Each cell's runs grouped by numerics fingerprint, with their commits and dirty count."""
    table = provenance.by_fingerprint(r.provenance)
    if table.empty:
        return {}
    caption = ("Numerics fingerprint per cell: the base model's loss on a fixed canary batch before the first "
               "update (`numerics.canary_loss_hex`; equal in every trial of a cell run by the same code and "
               "kernels), with the runs' commits and how many started on a dirty tree")
    doc.table(table.set_index(["cell", "fingerprint"]), caption)
    return {"fingerprints": (table, caption)}


def _environment(doc: Doc, runs: pd.DataFrame, diffs: pd.DataFrame, labels: dict[str, str]) -> Tables:
    """Whether each cell's runs recorded the same environment, and the environment per cell."""
    out: Tables = {}
    done = runs[runs["status"].isin(FINISHED)]
    keys = [c for c in runs.columns if c.startswith("environment.")]
    missing = int((~done[keys].notna().any(axis=1)).sum()) if keys else len(done)
    if missing == len(done):
        doc.para("Environment: not recorded by any finished run.")
        return out
    gap = f" ({missing} finished run(s) recorded none: not compared)" if missing else ""
    if diffs.empty:
        doc.para("Environment: every run of a cell that recorded one recorded the same "
                 f"environment (python, platform, packages, CUDA, CPU, git commit, host, threads){gap}.")
    else:
        doc.para("WARNING: the environment differs inside a cell; those trials did not run "
                 "under the same software/hardware, which confounds the variance:")
        doc.table(diffs, "Environment differences inside a cell", index=False)
        out["environment_differences"] = (diffs, "Environment differences inside a cell")
        if gap:
            doc.para(f"Environment not recorded{gap}.")
    env = environment_table(runs)
    doc.table(env[list(labels)].rename(columns=labels), "Environment per cell (as recorded in environment.json)")
    out["environment"] = (env, "Environment per cell")
    return out


def verdicts(doc: Doc, r: Results) -> Tables:
    """The repeatability verdict per cell (:func:`analysis.compute.verdict.cell_verdicts`, in words)."""
    table, bitwise = verdict_words.cell_verdicts_in_words(r.verdicts), verdict_words.bitwise_in_words(r.bitwise)
    doc.heading("Verdict per cell")
    doc.para("Identical adapters = every finished trial's `adapter_model.safetensors` has the same "
             "SHA-256. Greedy identical = every prompt's greedy completion is the same in every "
             "trial. Spread = max/min of the token-weighted held-out perplexity. When seed "
             "sources vary across trials, trials are meant to differ: the spread is the "
             "seed-to-seed variance the study measures.")
    doc.para("Bitwise verdict, one line per cell: all adapter SHA-256 equal? training-loss "
             "curves identical at every logged step? greedy generations identical?")
    doc.bullets(list(bitwise["line"]))
    doc.table(table.set_index("cell"), "Verdict per cell")
    return {"verdicts": (table, "Verdict per cell"),
            "bitwise_verdicts": (bitwise, "Bitwise verdict per cell")}


def arm_notes(runs: pd.DataFrame) -> list[str]:
    """One line per cell: the optimizer state, paging, device and dtype that actually ran."""
    notes = []
    for cell in plots.cell_order(runs):
        rows = runs[(runs["cell"] == cell) & runs["status"].isin(FINISHED)]
        if rows.empty:
            notes.append(f"`{cell}`: no finished run")
            continue
        if column(rows, S.optimizer.effective.bits).isna().all():
            notes.append(f"`{cell}`: optimizer state, paging and device not recorded")
            continue
        frac = pd.to_numeric(column(rows, S.optimizer.effective.state_8bit_param_fraction),
                             errors="coerce")
        frac_txt = f"{frac.mean():.1%}" if frac.notna().any() else "–"
        notes.append(
            f"`{cell}`: Adam state {_values(rows, (S.optimizer.effective.bits,))}-bit "
            f"({frac_txt} of trainable parameters with 8-bit state), paging effective "
            f"{_values(rows, (S.optimizer.effective.paging_effective,))}, device "
            f"{_values(rows, (S.device.type, S.device.compute_dtype))}")
    return notes


def _ci(view: pd.DataFrame, stat: str) -> list[str]:
    pairs = zip(view[f"{stat}_ci_low"], view[f"{stat}_ci_high"], strict=True)
    return [f"[{format_number(lo)}, {format_number(hi)}]" for lo, hi in pairs]


def _stats_view(cell_stats: pd.DataFrame) -> pd.DataFrame:
    """The perplexity statistics as shown: counts, location, spread, log scale, CIs."""
    view = cell_stats.set_index("cell")
    out = view[["n_runs", "n_complete", "n_diverged", "n_failed", "n", "mean"]].copy()
    out["mean 95% CI"] = _ci(view, "mean")
    out["std"] = view["std"]
    out["std 95% CI"] = _ci(view, "std")
    for key in ("cv", "median", "iqr", "min", "max", "spread", "gmean"):
        out[key] = view[key]
    out["gmean 95% CI"] = _ci(view, "gmean")
    out["gstd"] = view["gstd"]
    return out


def compact_view(table: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, cell) of :func:`analysis.compute.stats.stats_table`: n, mean, std, CV, median, IQR,
    min, max, max/min, mean 95% CI."""
    if table.empty:
        return table
    view = table.assign(metric=table["metric"].map(plots.metric_label)).set_index(["metric", "cell"])
    out = view[["n", "mean"]].copy()
    out["mean 95% CI"] = _ci(view, "mean")
    for key in ("std", "cv", "median", "iqr", "min", "max", "spread"):
        out[key] = view[key]
    return out


def perplexity(doc: Doc, tables_1_2: dict[tuple[str, str], pd.DataFrame], r: Results) -> Tables:
    """Tables 1/2 (``tables_1_2``: :func:`analysis.compute.tables.perplexity_tables`) and statistics
    for both perplexity definitions, with one figure each."""
    runs, out = r.study.runs, {}
    doc.heading("Held-out perplexity")
    definition = _values(runs[runs["status"].isin(FINISHED)], ("perplexity_definition",))
    definition = "not recorded" if definition == "–" else definition
    doc.para("Primary number: `perplexity_token_weighted` = exp(total NLL / total target tokens) "
             "over the held-out split. Also shown: `perplexity_mean_per_sequence`, the mean of "
             "per-sequence perplexities (HF evaluate's `mean_perplexity`), dominated by the "
             "worst sequences. As recorded by the runs: " + definition)
    doc.para("What each arm actually ran (read back from the optimizer after training):")
    doc.bullets(arm_notes(runs))
    for metric, tag in ((stats.PRIMARY_METRIC, "token_weighted"), (SECOND_METRIC, "mean_per_seq")):
        label = plots.metric_label(metric)
        if metric not in r.cell_stats:
            doc.para(f"The {label}: not recorded by any run.")
            continue
        for (of, dataset), table in tables_1_2.items():
            if of == metric:
                caption = f"Table 1/2 shape: {label}, dataset `{dataset}`, one row per trial"
                doc.table(table, caption)
                out[f"table1_{dataset}_perplexity_{tag}"] = (table, caption)
        out |= _cell_stats(doc, r.cell_stats[metric], label, tag)
        doc.figure(f"perplexity_{tag}", plots.metric_by_cell(runs, metric),
                   f"{label}, one point per trial")
    base = _values(runs[runs["status"].isin(FINISHED)], (S.metrics.base_perplexity_token_weighted,))
    doc.para(f"Base model before fine-tuning (token-weighted): "
             f"{'not recorded' if base == '–' else base}.")
    return out


def _cell_stats(doc: Doc, cell_stats: pd.DataFrame, label: str, tag: str) -> Tables:
    caption = (f"Statistics of the {label} over finished trials (complete + diverged, finite "
               "values). gmean/gstd: geometric mean and geometric standard deviation (a "
               "factor), i.e. mean and spread of log perplexity. 95% CIs: percentile bootstrap,"
               " 9,999 resamples (rough with 7 trials)")
    if len(cell_stats):
        doc.table(_stats_view(cell_stats), caption)
    return {f"cell_stats_{tag}": (cell_stats, caption)}


def comparisons(doc: Doc, r: Results) -> Tables:
    """Each optimizer comparison: plain-words reading, the test table, a per-trial ratio figure."""
    doc.heading("Arm comparisons (cells differing only in the optimizer)")
    table = r.comparisons
    if table.empty:
        doc.para("No two cells differ only in the optimizer: nothing to compare.")
        return {}
    doc.para("X is the arm with fewer requested optimizer bits. `p_x_gt_y` = P(X > Y) = U/(n_x·n_y)"
             " (common-language effect size; 0.5 = no shift), `rank_biserial` = 2P − 1, `mwu_p` "
             "Mann-Whitney U two-sided. `bf_p` Brown-Forsythe test of equal spread (Levene, "
             "median-centred), `bf_log_p` the same on log perplexity (spread as a ratio). When "
             "every common trial has the same lora_init/data_order/dropout seeds in both arms "
             "(`paired`), trials are matched and `wilcoxon_p` is the signed-rank test on the "
             "per-trial differences X − Y.")
    doc.bullets([prose.comparison_reading(row) for _, row in table.iterrows()])
    labels = short_labels(plots.cell_order(r.study.runs))  # the legend is in the Answer
    view = table.drop(columns=["metric"]).set_index(["x", "y"]).T
    view.columns = [f"{labels.get(x, x)} vs {labels.get(y, y)}" for x, y in view.columns]
    doc.table(view, "Comparisons of the token-weighted held-out perplexity")
    for i, row in table.iterrows():
        if not row["n_x"] or not row["n_y"]:
            continue
        fig = plots.paired_differences(r.study.runs, row["x"], row["y"])
        doc.figure(f"paired_ratio_{i + 1}", fig,
                   f"Per-trial perplexity ratio X/Y: X = {row['x']}, Y = {row['y']}")
    return {"comparisons": (table, "Comparisons of the token-weighted held-out perplexity")}


VERDICTS = Section("verdicts", present=verdicts)
PERPLEXITY = Section("perplexity", present=perplexity,
                     compute=lambda r: tables.perplexity_tables(r.study.runs, tuple(r.cell_stats)))
COMPARISONS = Section("comparisons", present=comparisons)
OVERVIEW = Section("overview", present=overview, compute=lambda r: verdict.environment_differences(r.study.runs))
