"""The task-score section (``eval.tasks``): each score's spread between identical trials beside
perplexity's, the base model's zero-/few-shot baselines, and whether the arms are equivalent on
each score (:func:`analysis.compute.task_scores.task_results`, computed by the section: :data:`TASKS`). Absent
when no run recorded a task score."""

from __future__ import annotations

import pandas as pd

from analysis.compute import task_scores
from analysis.compute.results import Results
from analysis.present import labels as L
from analysis.present import plots, verdict_words
from analysis.present.document import Doc
from analysis.present.formatting import format_number
from analysis.present.section import Section, Tables
from repeatability.config import evaluators
from repeatability.records import metrics as registry


def _short(metric: str) -> str:
    return registry.BY_KEY[metric].short if metric in registry.BY_KEY else metric


def _points(value: float) -> str:
    return "–" if pd.isna(value) else f"{value * 100:.1f}"


def _baseline_text(b: pd.Series) -> str:
    shots = "" if b["baseline"] == "zero_shot" else f" (k = {format_number(b['shots'])})"
    return f"base {b['baseline'].replace('_', '-')}{shots} {_points(b['value'])}"


def answer_lines(r: Results, labels: dict[str, str]) -> list[str]:
    """One line per comparison and task score: both arms' mean and spread between identical trials
    (points), perplexity's spread, the difference with its CI, the verdict, and the baselines."""
    t = TASKS.of(r)
    spreads = t.spreads.set_index(["cell", "metric"]) if len(t.spreads) else None
    lines = []
    for _, row in verdict_words.task_comparisons_in_words(t.comparisons, r.config).iterrows():
        sx, sy = spreads.loc[(row["x"], row["metric"])], spreads.loc[(row["y"], row["metric"])]
        base = t.baselines[t.baselines["metric"] == row["metric"]]
        base_text = "; ".join(_baseline_text(b) for _, b in base.iterrows())
        ci = f"{1 - r.config.alpha:.0%} CI {_points(row['ci_low'])} to {_points(row['ci_high'])}"
        lines.append(
            f"{_short(row['metric'])} (points), `{labels.get(row['x'], row['x'])}` vs "
            f"`{labels.get(row['y'], row['y'])}`: mean {_points(row['mean_x'])} vs {_points(row['mean_y'])}; "
            f"spread between identical trials (max − min) {_points(sx['spread'])} vs {_points(sy['spread'])} "
            f"(perplexity's max/min {format_number(sx['ppl_spread'])} vs {format_number(sy['ppl_spread'])}); "
            f"difference {_points(row['mean_diff'])} ({ci}): {row['verdict']}"
            + (f"; {base_text}." if base_text else "."))
    return lines


def tasks(doc: Doc, t: task_scores.TaskResults, r: Results) -> Tables:
    """Task scores per trial by arm, their spreads, the baselines and the equivalence tests."""
    if t.spreads.empty:
        return {}
    doc.heading("Task scores")
    doc.para("Scored on a fixed, seeded subset of the held-out split, the same in every run (its SHA-256 is "
             "each summary's `tasks.subset_sha256`; every example's prediction is in the run's "
             f"`evals/tasks.json`): {'; '.join(e.method for e in evaluators.EVALUATORS.values())}. "
             "Spread = max − min over identical trials, in points (1 point = 0.01); "
             f"equivalence: TOST on the difference with margin {verdict_words.task_margin_text(r.config)}.")
    labels = L.short_labels(list(plots.cell_order(r.study.runs)))
    for metric in task_scores.recorded(r.study.runs):
        fig = plots.metric_by_cell(r.study.runs, metric, labels=labels)
        base = t.baselines[t.baselines["metric"] == metric]
        ax = fig.axes[0]
        for (_, b), style in zip(base.iterrows(), ("--", ":")):
            ax.axhline(b["value"], color="0.35", ls=style, lw=1,
                       label=f"base {b['baseline'].replace('_', '-')} ({b['dataset']})")
        if len(base):
            ax.legend(loc="best", fontsize=8)
        doc.figure(f"task_{_short(metric).replace(' ', '_').replace('-', '').lower()}", fig,
                   f"{plots.metric_label(metric)} per trial, by arm; bar: median"
                   + ("; dashed / dotted: the base model zero-shot / few-shot" if len(base) else ""))
    spreads = t.spreads.assign(arm=t.spreads["cell"].map(lambda c: labels.get(c, c)),
                               score=t.spreads["metric"].map(_short))
    shown = spreads[["arm", "score", "n", "mean", "std", "min", "max", "spread", "ppl_spread"]]
    doc.table(shown.set_index(["arm", "score"]), "Task scores per arm: spread between identical trials "
              "(max − min) beside perplexity's (max/min)")
    out: Tables = {"task_spreads": (t.spreads, "Task scores per cell and their spread between identical trials")}
    if len(t.baselines):
        base = t.baselines.assign(score=t.baselines["metric"].map(_short))
        doc.table(base[["model", "dataset", "baseline", "shots", "score", "value"]].set_index(["model", "dataset"]),
                  "The base model with the same evaluators (once per study)")
        out["task_baselines"] = (t.baselines, "Base-model task baselines")
    if len(t.comparisons):
        compared = verdict_words.task_comparisons_in_words(t.comparisons, r.config)
        comp = compared.assign(x=compared["x"].map(lambda c: labels.get(c, c)),
                               y=compared["y"].map(lambda c: labels.get(c, c)), score=compared["metric"].map(_short))
        doc.table(comp[["x", "y", "score", "design", "n_x", "mean_diff", "ci_low", "ci_high", "tost_p", "diff_p",
                        "verdict"]].set_index(["x", "y", "score"]),
                  f"Arms compared on each task score (X − Y; TOST margin {verdict_words.task_margin_text(r.config)})")
        out["task_comparisons"] = (compared, "Task-score comparisons of the arms")
    return out


TASKS: Section[task_scores.TaskResults] = Section("tasks", present=tasks,
                                                  compute=lambda r: task_scores.task_results(r.study.runs, r.config))
