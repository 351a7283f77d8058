"""The report's sections on what the runs did and produced: loss curves, generations, memory
and time, what could not run as asked, and what could not be read. Same conventions as
:mod:`analysis.present.sections`; the loss curves, generations and resources sections compute the
numbers only they read (:data:`LOSS`, :data:`GENERATION`, :data:`RESOURCES`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.compute import curves, generations, tables
from analysis.compute.curves import LOSS_ATOL, LossResults, Parting
from analysis.compute.generations import GenerationResults
from analysis.compute.results import Results
from analysis.load import FINISHED, column
from analysis.present import plots
from analysis.present.document import Doc
from analysis.present.formatting import format_number
from analysis.present.labels import short_labels
from analysis.present.section import Section, Tables
from analysis.present.sections import compact_view
from repeatability.records.summary import COLUMNS as S


def _parting_label(pair: Parting) -> str:
    return f"X = {pair.x}, Y = {pair.y}" + ("" if pair.seed_matched else " (NOT seed-matched)")


def loss(doc: Doc, losses: LossResults, r: Results) -> Tables:
    """Loss curves, their spread, final-loss statistics and where curves part."""
    doc.heading("Loss curves")
    study = r.study
    if study.curves.empty:
        doc.para("No loss curve was recorded.")
        return {}
    order = plots.cell_order(study.runs)
    labels = short_labels(order)
    doc.figure("loss_arms", plots.loss_by_arm(losses.bands, order, labels),
               f"Training loss smoothed (EMA over logged steps, span {curves.SMOOTH_SPAN}: weight "
               f"{2 / (curves.SMOOTH_SPAN + 1):.3f} per new step, bias-corrected), every arm on one axis: line = "
               "median over trials, band = lowest to highest trial")
    doc.figure("loss_train", plots.loss_curves(study.curves, "train", order, losses.smoothed, labels),
               f"Training loss per optimizer step, one panel per arm: each trial's raw losses faint, its "
               f"smoothed curve (the same EMA, span {curves.SMOOTH_SPAN}) on top (finished runs)")
    if (study.curves["split"] == "val").any():
        doc.figure("loss_val", plots.loss_curves(study.curves, "val", order, labels=labels),
                   "Validation-slice loss every `train.eval_every` steps, one line per trial")
    doc.figure("loss_spread", plots.dispersion_figure(losses.dispersion, "train"),
               "Standard deviation of the training loss across trials at each step")
    final = compact_view(losses.final_stats)
    if not final.empty:
        doc.table(final, "Final losses per cell (last logged step; finished trials)")
    doc.para(f"Where curves part: `first_step` is the first logged step at which two trials "
             f"(or the two arms of one trial) have different training losses at all, "
             f"`first_step_tol` the first at which they differ by more than {LOSS_ATOL} "
             "nats/token; empty = never.")
    doc.table(losses.parting.set_index("cell"), "Where the trials of a cell part")
    out = {"loss_within_cell": (losses.parting, "Where the trials of a cell part"),
           "final_loss_stats": (final, "Final losses per cell"),
           "loss_dispersion": (losses.dispersion, "Training loss across trials by step")}
    for i, pair in enumerate(losses.parting_pairs, 1):
        caption = f"Where arm X's curve parts from arm Y's, per trial: {_parting_label(pair)}"
        doc.table(pair.table.drop(columns=["x", "y"]).set_index("trial"), caption)
        out[f"loss_paired_{i}"] = (pair.table, caption)
    return out


def generation(doc: Doc, g: GenerationResults, r: Results) -> Tables:
    """Agreement between trials, then every prompt's completions side by side per dataset."""
    doc.heading("Generations")
    if r.study.generations.empty:
        doc.para("No generations were recorded.")
        return {}
    agree = g.agreement
    doc.para("`n_distinct`: distinct completions over the cell's finished trials; `exact_match`: "
             "fraction of trial pairs with identical completions; `similarity`: mean pairwise "
             "difflib ratio (1 = identical).")
    doc.table(agree.drop(columns=["prompt"]).set_index(["cell", "prompt_index", "mode"]),
              "Agreement between trials")
    out = {"generation_agreement": (agree, "Agreement between trials")}
    for dataset in sorted({t.dataset for t in g.tables} | set(g.answer_letters)):
        for t in (t for t in g.tables if t.dataset == dataset):
            caption = (f"Tables 4–7 shape: {t.mode} completions, dataset `{dataset}`, prompt "
                       f"{t.prompt_index}: `{t.prompt}`")
            doc.table(t.table, caption)
            out[f"generations_{dataset}_p{t.prompt_index}_{t.mode}"] = (t.table, caption)
        if dataset in g.answer_letters:
            caption = f"Tables 8/9 shape: answer letters (greedy), dataset `{dataset}`"
            doc.table(g.answer_letters[dataset], caption)
            out[f"answer_letters_{dataset}"] = (g.answer_letters[dataset], caption)
    return out


def resources(doc: Doc, m: tables.Resources, r: Results) -> Tables:
    """Table 3 (memory), Tables 10/11 (times) and time statistics per cell."""
    doc.heading("Memory and time")
    out = {}
    if not m.memory.empty:
        doc.table(m.memory, f"Table 3 shape: {m.memory_label}, mean over finished trials")
        out["table3_memory"] = (m.memory, m.memory_label)
    if not m.time_metrics:
        doc.para("Times: not recorded by any run.")
        return out
    for dataset, times in m.time_tables.items():
        caption = (f"Tables 10/11 shape, dataset `{dataset}`: training time and held-out scoring "
                   "time (the paper's test time), seconds")
        doc.table(times, caption)
        out[f"table10_{dataset}_times"] = (times, caption)
    time_stats = compact_view(m.time_stats)
    if not time_stats.empty:
        doc.table(time_stats, "Times per cell, seconds (finished trials). Wall-clock on a shared "
                  "machine: differences say as much about the load as about the optimizer")
        out["time_stats"] = (time_stats, "Times per cell, seconds")
    return out


def _flag(value: Any) -> bool | None:
    """A recorded boolean as ``True``/``False``; ``None`` when the run did not record it."""
    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return None
    return bool(value)


def _issues(row: pd.Series) -> list[tuple[str, str]]:
    """(issue, detail) pairs for one run; empty when it ran as asked."""
    get = row.get
    issues: list[tuple[str, str]] = []
    status = get("status")
    if status == "failed":
        issues.append(("failed", f"{get(S.error.type) or 'error'}: {get(S.error.message) or ''}"))
    elif status == "diverged":
        step, last = format_number(get(S.divergence.step)), format_number(get(S.divergence.last_loss))
        where = f" at step {step} (last loss {last})" if get(S.divergence.step) is not None else ""
        issues.append(("diverged", f"{get(S.divergence.reason)}{where}"))
    elif status == "incomplete":
        issues.append(("incomplete", "no DONE marker: half-finished; re-run the study to redo it"))
    elif status in ("unreadable", "corrupted"):
        issues.append((status, str(get("load_error") or "see problems")))
    if _flag(get(S.optimizer.requested.is_paged)) is True \
            and _flag(get(S.optimizer.effective.paging_effective)) is False:
        issues.append(("paging not effective",
                       str(get(S.optimizer.effective.paging_note) or "no state tensor was paged")))
    if get(S.optimizer.requested.optim_bits) == 8:
        bits = get(S.optimizer.effective.bits)
        frac = get(S.optimizer.effective.state_8bit_param_fraction)
        if bits == 32:
            issues.append(("8-bit state not used", "every optimizer state stayed 32-bit"))
        elif isinstance(frac, (int, float)) and not math.isnan(frac) and frac < 1:
            detail = f"{frac:.1%} of trainable parameters had 8-bit state; tensors under min_8bit_size keep 32-bit"
            issues.append(("8-bit state partial", detail))
    return issues


def run_issues(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run that failed, diverged, is half-finished, unreadable or corrupted, and every run whose
    optimizer did not do what was requested (paging off on CPU, 8-bit state partial or absent), with
    what its records say about it."""
    out: list[dict[str, Any]] = []
    for _, row in runs.iterrows():
        out += [{"run": row["run"], "cell": row["cell"], "trial": row["trial"], "issue": issue,
                 "detail": detail} for issue, detail in _issues(row)]
    return pd.DataFrame(out, columns=["run", "cell", "trial", "issue", "detail"])


def not_as_asked(doc: Doc, r: Results) -> Tables:
    """Failed, diverged, half-finished, unreadable, corrupted runs and optimizer requests not honoured
    (:func:`run_issues`)."""
    doc.heading("What could not run as asked")
    issues = run_issues(r.study.runs)
    done = r.study.runs[r.study.runs["status"].isin(FINISHED)]
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


def problems(doc: Doc, r: Results) -> Tables:
    """What could not be read (corrupted files, unknown schema versions, stray folders), and
    finished runs whose files no longer match their manifest."""
    doc.heading("Problems found while reading the study")
    table = pd.DataFrame([vars(p) for p in r.study.problems])
    if table.empty:
        doc.para("None: every run directory was read as the contract describes.")
        return {}
    doc.para("These runs (or files) could not be read, or changed after their run finished; they are "
             "listed in the runs table with status `unreadable` or `corrupted` (their numbers are left "
             "out of every statistic), or without the unreadable part, and the rest is reported.")
    doc.table(table, "Problems", index=False)
    return {"problems": (table, "Problems")}


LOSS: Section[LossResults] = Section("loss", present=loss,
                                     compute=lambda r: curves.loss_results(r.study, r.seed_matched))
GENERATION: Section[GenerationResults] = Section("generation", present=generation,
                                                 compute=lambda r: generations.generation_results(r.study.generations))
RESOURCES: Section[tables.Resources] = Section("resources", present=resources,
                                               compute=lambda r: tables.resources(r.study.runs))
NOT_AS_ASKED = Section("not_as_asked", present=not_as_asked)
PROBLEMS = Section("problems", present=problems)
