"""The report's sections: each function adds headings, text, tables and figures to a
:class:`~analysis.document.Doc` and returns the tables it wants written to ``tables/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from analysis import curves, generations, plots, stats, tables, verdict
from analysis.document import Doc
from analysis.load import FINISHED, Study, column

log = logging.getLogger(__name__)

Tables = dict[str, tuple[pd.DataFrame, str]]  # file stem → (table, caption)
SECOND_METRIC = "metrics.perplexity_mean_per_sequence"

# Setup rows: label → summary keys (joined with " / " when several).
SETUP_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base model (resolved)", ("model.resolved",)),
    ("LoRA r / alpha / dropout / targets", ("model.lora.r", "model.lora.alpha",
                                           "model.lora.dropout", "model.lora.targets")),
    ("dataset / source / template", ("data.dataset", "data.source", "data.template")),
    ("examples train / val / held-out scored", ("data.n_train", "data.n_val",
                                                "data.n_heldout_scored")),
    ("device", ("device.type", "device.name")),
    ("compute dtype", ("device.compute_dtype",)),
    ("base 4-bit / quant type / double quant", ("device.quantization.load_in_4bit",
                                                "device.quantization.quant_type",
                                                "device.quantization.double_quant")),
    ("optimizer requested: name / bits / paged", ("optimizer.requested.name",
                                                  "optimizer.requested.optim_bits",
                                                  "optimizer.requested.is_paged")),
    ("optimizer class that ran", ("optimizer.effective.class",)),
    ("effective state bits", ("optimizer.effective.bits",)),
    ("fraction of params with 8-bit state", ("optimizer.effective.state_8bit_param_fraction",)),
    ("paging effective", ("optimizer.effective.paging_effective",)),
    ("learning rate / steps", ("optimizer.requested.lr", "metrics.steps")),
    ("seed policy", ("seeds.policy",)),
    ("determinism mode / deterministic algorithms / threads",
     ("determinism.mode", "determinism.use_deterministic_algorithms",
      "determinism.torch_num_threads")),
    ("torch / transformers / peft / bitsandbytes",
     ("environment.packages.torch", "environment.packages.transformers",
      "environment.packages.peft", "environment.packages.bitsandbytes")),
    ("git commit / dirty", ("environment.git.commit", "environment.git.dirty")),
)


def _values(rows: pd.DataFrame, keys: Sequence[str]) -> str:
    """Distinct values over the runs, each a " / "-joined tuple of ``keys``; "–" if none."""
    cols = [column(rows, k) for k in keys]
    seen = []
    for i in rows.index:
        parts = [c.loc[i] for c in cols]
        if all(p is None or (not isinstance(p, (list, dict)) and pd.isna(p)) for p in parts):
            continue
        text = " / ".join(tables.format_number(p) if not isinstance(p, (list, dict))
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
        col["seed sources varied across trials"] = ", ".join(verdict.varying_seeds(rows)) or "none"
        data[cell] = col
    return pd.DataFrame(data)


def overview(doc: Doc, study: Study) -> Tables:
    runs = study.runs
    counts = runs["status"].value_counts().to_dict()
    doc.para(f"Study directory: `{study.path}`. {len(runs)} run directories in "
             f"{runs['cell'].nunique()} cells; status counts: "
             + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".")
    doc.heading("Setup: what actually ran")
    doc.para("Read from each run's summary (the optimizer's state as inspected after training, "
             "not the config); several values in one cell are separated by `;`.")
    setup = setup_table(runs)
    doc.table(setup, "Setup per cell")
    return {"setup": (setup, "Setup per cell")}


def verdicts(doc: Doc, study: Study) -> Tables:
    table = verdict.cell_verdicts(study.runs, study.generations)
    doc.heading("Verdict per cell")
    doc.para("Identical adapters = every finished trial's `adapter_model.safetensors` has the same "
             "SHA-256. Greedy identical = every prompt's greedy completion is the same in every "
             "trial. Spread = max/min of the token-weighted held-out perplexity. When seed "
             "sources vary across trials, trials are meant to differ: the spread is the "
             "seed-to-seed variance the study measures.")
    doc.table(table.set_index("cell"), "Verdict per cell")
    return {"verdicts": (table, "Verdict per cell")}


def _stats_view(cell_stats: pd.DataFrame) -> pd.DataFrame:
    view = cell_stats.set_index("cell")
    ci = lambda lo, hi: [f"[{tables.format_number(a)}, {tables.format_number(b)}]"  # noqa: E731
                         for a, b in zip(view[lo], view[hi])]
    out = view[["n_runs", "n_complete", "n_diverged", "n_failed", "n", "median"]].copy()
    out["median 95% CI"] = ci("median_ci_low", "median_ci_high")
    out["gmean"] = view["gmean"]
    out["gmean 95% CI"] = ci("gmean_ci_low", "gmean_ci_high")
    for key in ("mean", "std", "cv", "min", "max", "spread"):
        out[key] = view[key]
    return out


def perplexity(doc: Doc, study: Study) -> Tables:
    runs, out = study.runs, {}
    doc.heading("Held-out perplexity")
    definition = _values(runs[runs["status"].isin(FINISHED)], ("perplexity_definition",))
    doc.para("Primary number: `perplexity_token_weighted` = exp(total NLL / total target tokens) "
             "over the held-out split. Also shown: `perplexity_mean_per_sequence`, the mean of "
             "per-sequence perplexities (HF evaluate's `mean_perplexity`), dominated by the "
             "worst sequences. As recorded by the runs: " + definition)
    for metric, tag in ((stats.PRIMARY_METRIC, "token_weighted"), (SECOND_METRIC, "mean_per_seq")):
        label = plots.metric_label(metric)
        for dataset in sorted(runs["dataset"].unique()):
            table = tables.perplexity_table(runs, dataset, metric)
            caption = f"Table 1/2 shape: {label}, dataset `{dataset}`, one row per trial"
            doc.table(table, caption)
            out[f"table1_{dataset}_perplexity_{tag}"] = (table, caption)
        cell_stats = stats.cell_stats(runs, metric)
        caption = (f"Statistics of the {label} over finished trials (complete + diverged, finite "
                   "values); CIs: percentile bootstrap, 9,999 resamples")
        if len(cell_stats):
            doc.table(_stats_view(cell_stats), caption)
        out[f"cell_stats_{tag}"] = (cell_stats, caption)
        doc.figure(f"perplexity_{tag}", plots.metric_by_cell(runs, metric),
                   f"{label}, one point per trial")
    base = _values(runs[runs["status"].isin(FINISHED)], ("metrics.base_perplexity_token_weighted",))
    doc.para(f"Base model before fine-tuning (token-weighted): {base}.")
    return out


def comparisons(doc: Doc, study: Study) -> Tables:
    doc.heading("Arm comparisons (cells differing only in the optimizer)")
    table = stats.compare_all(study.runs)
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
    view = table.drop(columns=["metric"]).set_index(["x", "y"]).T
    view.columns = [f"{x} vs {y}" for x, y in view.columns]
    doc.table(view, "Comparisons of the token-weighted held-out perplexity")
    for i, row in table.iterrows():
        fig = plots.paired_differences(study.runs, row["x"], row["y"])
        doc.figure(f"paired_ratio_{i + 1}", fig,
                   f"Per-trial perplexity ratio X/Y: X = {row['x']}, Y = {row['y']}")
    return {"comparisons": (table, "Comparisons of the token-weighted held-out perplexity")}


def loss(doc: Doc, study: Study) -> Tables:
    doc.heading("Loss curves")
    if study.curves.empty:
        doc.para("No loss curve was recorded.")
        return {}
    doc.figure("loss_train", plots.loss_curves(study.curves, "train"),
               "Training loss per optimizer step, one line per trial (finished runs)")
    doc.figure("loss_spread", plots.loss_spread(study.curves, "train"),
               "Standard deviation of the training loss across trials at each step")
    within = curves.within_cell_divergence(study.curves)
    doc.para("First step at which two trials of a cell log different training losses "
             "(`first_step`; empty when all trials are identical throughout):")
    doc.table(within.set_index("cell"), "Where trials part, per cell", index=True)
    out = {"loss_within_cell": (within, "Where trials part, per cell")}
    for i, (x, y) in enumerate(stats.comparison_pairs(study.runs), 1):
        paired = curves.paired_divergence(study.curves, x, y)
        matched = "seed-matched" if stats.paired_trials(study.runs, x, y) else "NOT seed-matched"
        caption = f"First step where arm X's curve parts from arm Y's ({matched}): X = {x}, Y = {y}"
        doc.table(paired.drop(columns=["x", "y"]).set_index("trial"), caption)
        out[f"loss_paired_{i}"] = (paired, caption)
    return out


def generation(doc: Doc, study: Study) -> Tables:
    doc.heading("Generations")
    gens = study.generations
    if gens.empty:
        doc.para("No generations were recorded.")
        return {}
    agree = generations.agreement(gens)
    doc.para("`n_distinct`: distinct completions over the cell's finished trials; `exact_match`: "
             "fraction of trial pairs with identical completions; `similarity`: mean pairwise "
             "difflib ratio (1 = identical).")
    doc.table(agree.drop(columns=["prompt"]).set_index(["cell", "prompt_index", "mode"]),
              "Agreement between trials")
    out = {"generation_agreement": (agree, "Agreement between trials")}
    for dataset, rows in gens.groupby("dataset", sort=True):
        for _, p in generations.prompts(rows).iterrows():
            index = int(p["prompt_index"])
            for mode in sorted(rows["mode"].dropna().unique()):
                table = generations.side_by_side(rows, index, mode)
                caption = (f"Tables 4–7 shape: {mode} completions, dataset `{dataset}`, prompt "
                           f"{index}: `{p['prompt']}`")
                doc.table(table, caption)
                out[f"generations_{dataset}_p{index}_{mode}"] = (table, caption)
        letters = generations.answer_letters(rows)
        if not letters.empty:
            caption = f"Tables 8/9 shape: answer letters (greedy), dataset `{dataset}`"
            doc.table(letters, caption)
            out[f"answer_letters_{dataset}"] = (letters, caption)
    return out


def resources(doc: Doc, study: Study) -> Tables:
    doc.heading("Memory and time")
    memory, label = tables.memory_table(study.runs)
    out = {}
    if not memory.empty:
        doc.table(memory, f"Table 3 shape: {label}, mean over finished trials")
        out["table3_memory"] = (memory, label)
    for dataset in sorted(study.runs["dataset"].unique()):
        times = tables.timing_table(study.runs, dataset)
        caption = (f"Tables 10/11 shape, dataset `{dataset}`: training time and held-out scoring "
                   "time (the paper's test time), seconds")
        doc.table(times, caption)
        out[f"table10_{dataset}_times"] = (times, caption)
    return out


def not_as_asked(doc: Doc, study: Study) -> Tables:
    doc.heading("What could not run as asked")
    issues = verdict.not_as_asked(study.runs)
    if issues.empty:
        doc.para("Every run finished and its optimizer did what was requested.")
        return {}
    grouped = (issues.groupby(["cell", "issue", "detail"], sort=True)["trial"]
               .apply(lambda t: ", ".join(str(x) for x in sorted(t))).reset_index()
               .rename(columns={"trial": "trials"}))
    doc.table(grouped[["cell", "issue", "trials", "detail"]], "Runs that did not run as asked",
              index=False)
    return {"not_as_asked": (issues, "Runs that did not run as asked")}


def problems(doc: Doc, study: Study) -> Tables:
    doc.heading("Problems found while reading the study")
    if not study.problems:
        doc.para("None: every run directory was read as the contract describes.")
        return {}
    table = pd.DataFrame([vars(p) for p in study.problems])
    doc.para("These runs (or files) could not be read; they are listed in the runs table with "
             "status `unreadable` (or without the unreadable part) and the rest is reported.")
    doc.table(table, "Problems", index=False)
    return {"problems": (table, "Problems")}


SECTIONS = (overview, verdicts, perplexity, comparisons, loss, generation, resources,
            not_as_asked, problems)
