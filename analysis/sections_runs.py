"""The report's sections on what the runs did and produced: loss curves, generations, memory
and time, what could not run as asked, and what could not be read. Same conventions as
:mod:`analysis.sections`.
"""

from __future__ import annotations

import pandas as pd

from analysis import curves, generations, plots, stats, tables, verdict
from analysis.document import Doc
from analysis.load import FINISHED, Study, column
from analysis.sections import Tables, compact_stats
from repeatability.summary import COLUMNS as S

LOSS_METRICS = (S.metrics.final_train_loss, S.metrics.final_val_loss)
TIME_METRICS = (S.timings.train_s, S.timings.eval_s, S.timings.total_s)
LOSS_ATOL = 0.01  # nats/token: a difference in loss curves worth calling material


def _parting(study: Study) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame]]]:
    """Where trials part within each cell, and where paired arms part, at atol 0 and
    :data:`LOSS_ATOL` (``first_step`` = any difference, ``first_step_tol`` = beyond it)."""
    within = curves.within_cell_parting(study.curves)
    tol = curves.within_cell_parting(study.curves, atol=LOSS_ATOL)
    within.insert(5, "first_step_tol", within["cell"].map(tol.set_index("cell")["first_step"]))
    pairs = []
    for x, y in stats.comparison_pairs(study.runs):
        paired = curves.paired_parting(study.curves, x, y)
        tol = curves.paired_parting(study.curves, x, y, atol=LOSS_ATOL)
        paired.insert(4, "first_step_tol", tol["first_step"].to_numpy())
        pairs.append((f"X = {x}, Y = {y}" + ("" if stats.paired_trials(study.runs, x, y)
                                              else " (NOT seed-matched)"), paired))
    return within, pairs


def loss(doc: Doc, study: Study) -> Tables:
    """Loss curves, their spread, final-loss statistics and where curves part."""
    doc.heading("Loss curves")
    if study.curves.empty:
        doc.para("No loss curve was recorded.")
        return {}
    order = plots.cell_order(study.runs)
    doc.figure("loss_train", plots.loss_curves(study.curves, "train", order),
               "Training loss per optimizer step: every trial overlaid, grey band = min–max "
               "across trials (finished runs)")
    if (study.curves["split"] == "val").any():
        doc.figure("loss_val", plots.loss_curves(study.curves, "val", order),
                   "Validation-slice loss every `train.eval_every` steps, one line per trial")
    doc.figure("loss_spread", plots.loss_spread(study.curves, "train"),
               "Standard deviation of the training loss across trials at each step")
    final = compact_stats(study.runs, LOSS_METRICS)
    if not final.empty:
        doc.table(final, "Final losses per cell (last logged step; finished trials)")
    within, pairs = _parting(study)
    doc.para(f"Where curves part: `first_step` is the first logged step at which two trials "
             f"(or the two arms of one trial) have different training losses at all, "
             f"`first_step_tol` the first at which they differ by more than {LOSS_ATOL} "
             "nats/token; empty = never.")
    doc.table(within.set_index("cell"), "Where the trials of a cell part")
    out = {"loss_within_cell": (within, "Where the trials of a cell part"),
           "final_loss_stats": (final, "Final losses per cell"),
           "loss_dispersion": (curves.dispersion(study.curves), "Training loss across trials by step")}
    for i, (label, paired) in enumerate(pairs, 1):
        caption = f"Where arm X's curve parts from arm Y's, per trial: {label}"
        doc.table(paired.drop(columns=["x", "y"]).set_index("trial"), caption)
        out[f"loss_paired_{i}"] = (paired, caption)
    return out


def generation(doc: Doc, study: Study) -> Tables:
    """Agreement between trials, then every prompt's completions side by side per dataset."""
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
    """Table 3 (memory), Tables 10/11 (times) and time statistics per cell."""
    doc.heading("Memory and time")
    memory, label = tables.memory_table(study.runs)
    out = {}
    if not memory.empty:
        doc.table(memory, f"Table 3 shape: {label}, mean over finished trials")
        out["table3_memory"] = (memory, label)
    recorded = [k for k in TIME_METRICS if column(study.runs, k).notna().any()]
    if not recorded:
        doc.para("Times: not recorded by any run.")
        return out
    for dataset in sorted(study.runs["dataset"].unique()):
        times = tables.timing_table(study.runs, dataset)
        caption = (f"Tables 10/11 shape, dataset `{dataset}`: training time and held-out scoring "
                   "time (the paper's test time), seconds")
        doc.table(times, caption)
        out[f"table10_{dataset}_times"] = (times, caption)
    time_stats = compact_stats(study.runs, recorded)
    if not time_stats.empty:
        doc.table(time_stats, "Times per cell, seconds (finished trials). Wall-clock on a shared "
                  "machine: differences say as much about the load as about the optimizer")
        out["time_stats"] = (time_stats, "Times per cell, seconds")
    return out


def not_as_asked(doc: Doc, study: Study) -> Tables:
    """Failed, diverged, half-finished, unreadable, corrupted runs and optimizer requests not honoured."""
    doc.heading("What could not run as asked")
    issues = verdict.not_as_asked(study.runs)
    done = study.runs[study.runs["status"].isin(FINISHED)]
    unknown = int(column(done, S.optimizer.effective.class_).isna().sum())
    note = (f"{unknown} finished run(s) recorded no optimizer state (imported runs): whether "
            "their optimizer did what was requested is not known.") if unknown else ""
    if issues.empty:
        doc.para(f"Every run finished. {note}" if unknown
                 else "Every run finished and its optimizer did what was requested.")
        return {}
    if note:
        doc.para(note)
    grouped = (issues.groupby(["cell", "issue", "detail"], sort=True)["trial"]
               .apply(lambda t: ", ".join(str(x) for x in sorted(t))).reset_index()
               .rename(columns={"trial": "trials"}))
    doc.table(grouped[["cell", "issue", "trials", "detail"]], "Runs that did not run as asked",
              index=False)
    return {"not_as_asked": (issues, "Runs that did not run as asked")}


def problems(doc: Doc, study: Study) -> Tables:
    """What could not be read (corrupted files, unknown schema versions, stray folders), and
    finished runs whose files no longer match their manifest."""
    doc.heading("Problems found while reading the study")
    if not study.problems:
        doc.para("None: every run directory was read as the contract describes.")
        return {}
    table = pd.DataFrame([vars(p) for p in study.problems])
    doc.para("These runs (or files) could not be read, or changed after their run finished; they are "
             "listed in the runs table with status `unreadable` or `corrupted` (their numbers are left "
             "out of every statistic), or without the unreadable part, and the rest is reported.")
    doc.table(table, "Problems", index=False)
    return {"problems": (table, "Problems")}

