"""The report's first section: the headline (:mod:`analysis.present.headline`: at most three
sentences), its one figure, then the answer in a few lines per comparison. Every word is written
from :class:`~analysis.compute.results.Results` (nothing hand-written; the numbers of the learning-rate
edge, time-to-blow-up, task-score and variance-sources sections through their
:class:`~analysis.present.section.Section`): the arms and n, the verdict
with its p, the geometric-mean perplexity ratio with its CI, the spread between identical trials,
blow-ups with exact CIs, and bitwise identity; for a study with a learning-rate axis, the edge's
answer and its figure; with ``--compare``, the other studies' blow-up rates beside ours. The
sections after it give the evidence; setup and environment go last (the appendix,
:func:`analysis.present.sections.overview`).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.compute import provenance
from analysis.compute.results import Results
from analysis.compute.stats import PRIMARY_METRIC
from analysis.present import (
    headline,
    plots,
    plots_edge,
    prose,
    prose_edge,
    sections_survival,
    sections_tasks,
    sections_variance,
)
from analysis.present import labels as L
from analysis.present.document import Doc
from analysis.present.formatting import format_number
from analysis.present.section import Section, Tables
from analysis.present.sections_edge import GPU_TEST, LR_EDGE
from analysis.present.sections_survival import SURVIVAL
from analysis.present.sections_variance import SOURCES

MAX_LINES = 6  # comparisons spelled out in the answer; the rest are in "Arm comparisons"


def ratio_decimals(low: float, high: float) -> int:
    """Decimals that keep a ratio's CI bounds apart: one more than the CI width's first digit
    (0.7696 (0.7284–0.8132) → 3; 1.0002 (1.00015–1.00025) → 5), at least 3, at most 8. A ratio
    of 1.0002 printed to 4 significant digits reads "1 (95% CI 1–1)", which says nothing."""
    width = abs(high - low)
    if not math.isfinite(width) or width == 0:
        return 4
    first_digit = -math.floor(math.log10(float(f"{width:.1g}")))  # 0.085 → 2, 1e-4 → 4
    return min(8, max(3, first_digit + 1))


def _ratio(row: pd.Series, alpha: float) -> str:
    if not math.isfinite(row["ratio_gmean"]):
        return "geometric-mean perplexity ratio: –"
    if pd.isna(row["ratio_ci_low"]):
        return f"geometric-mean perplexity ratio {format_number(row['ratio_gmean'])}"
    values = (row["ratio_gmean"], row["ratio_ci_low"], row["ratio_ci_high"])
    if max(abs(v) for v in values) >= 1e3:  # 5 significant digits say it; decimals would not
        ratio, low, high = (format_number(v) for v in values)
    else:
        d = ratio_decimals(row["ratio_ci_low"], row["ratio_ci_high"])
        ratio, low, high = (f"{v:.{d}f}" for v in values)
    return f"geometric-mean perplexity ratio {ratio} ({1 - alpha:.0%} CI {low}–{high})"


def _blowups(r: Results, cell: str) -> tuple[int, int]:
    b = r.blowup_rates.set_index("cell").loc[cell]
    return int(b["blowups"]), int(b["n"])


def cell_facts(r: Results, cell: str) -> dict[str, str]:
    """One cell's spread (max/min perplexity), blow-ups with CI and bitwise identity, as text."""
    v = r.verdicts.set_index("cell").loc[cell]
    b = r.blowup_rates.set_index("cell").loc[cell]
    greedy = v["greedy_prompts_identical"]
    return {"spread": format_number(v["ppl_spread"]),
            "blowups": prose.rate_text(int(b["blowups"]), int(b["n"]), b["ci_low"], b["ci_high"]),
            "adapters": "yes" if v["adapters_identical"] else "no",
            "greedy": "–" if greedy.endswith("/0") else greedy}


def comparison_line(r: Results, row: pd.Series, labels: dict[str, str]) -> str:
    """One comparison of :attr:`Results.equivalence` in one paragraph of numbers."""
    x, y = row["x"], row["y"]
    fx, fy = cell_facts(r, x), cell_facts(r, y)
    n = f"{row['n_x']} paired trials" if row["design"] == "paired" else f"{row['n_x']} + {row['n_y']} trials"
    (bx, nx), (by, ny) = _blowups(r, x), _blowups(r, y)
    if bx or by:  # a ratio of means over blown-up and sane runs is not a shift of either: defer
        ratio = (f"no perplexity ratio: blow-ups in {bx}/{nx} vs {by}/{ny} runs would drive it, "
                 f"the blow-up rates compare these arms")
    else:
        ratio = f"{_ratio(row, r.config.alpha)} (first / second)"
    return (f"`{labels[x]}` vs `{labels[y]}`, {n}: {headline.verdict_words(row, r.config)}; "
            f"{ratio}. Spread between identical "
            f"trials (max/min perplexity): {fx['spread']} vs {fy['spread']}. Blow-ups: "
            f"{fx['blowups']} vs {fy['blowups']}. Adapters bitwise identical across trials: "
            f"{fx['adapters']} / {fy['adapters']}; greedy generations identical: "
            f"{fx['greedy']} / {fy['greedy']} prompts.")


def cell_line(r: Results, cell: str, labels: dict[str, str]) -> str:
    """A cell in no comparison: n, median perplexity, spread, blow-ups, bitwise identity."""
    f, v = cell_facts(r, cell), r.verdicts.set_index("cell").loc[cell]
    stats = r.cell_stats.get(PRIMARY_METRIC, pd.DataFrame())
    median = stats.set_index("cell")["median"].get(cell) if len(stats) else None
    return (f"`{labels[cell]}`, {v['n_finished']} finished trials: median perplexity "
            f"{format_number(median)}; spread between identical trials (max/min) {f['spread']}; "
            f"blow-ups {f['blowups']}; adapters bitwise identical: {f['adapters']}; greedy "
            f"generations identical: {f['greedy']} prompts.")


def compare_lines(r: Results) -> list[str]:
    """With ``--compare``: per optimizer arm, each study's blow-ups (pooled over its models and
    datasets) with exact CIs, ours first."""
    if r.compare_pooled.empty:
        return []
    lines = []
    for arm, group in r.compare_pooled.groupby("arm", sort=False):
        rates = [f"{row['study']} {prose.rate_text(int(row['blowups']), int(row['n']), row['ci_low'], row['ci_high'])}"
                 for _, row in group.iterrows()]
        lines.append(f"Blow-ups of `{arm}`, by study: " + "; ".join(rates) + ".")
    return lines


def _rel(value: float) -> str:
    """A relative difference in percent: 2 significant digits below 1% (1e-5 → 0.001%)."""
    return "–" if pd.isna(value) else f"{value * 100:.2g}%" if value < 0.01 else f"{value:.1%}"


def _gap(row: pd.Series) -> str:
    if row["max_abs_rel_diff"] == 0:
        return "perplexity identical in every trial"
    return (f"perplexity differs by at most {_rel(row['max_abs_rel_diff'])} "
            f"(median {_rel(row['median_abs_rel_diff'])})")


def reproducibility_lines(r: Results, labels: dict[str, str]) -> list[str]:
    """With ``--compare``: per cell whose trials ran again with the same seeds in another study,
    the largest relative perplexity difference beside the seed spread and the arm effect."""
    lines = []
    for _, row in r.cross_cells.iterrows():
        part = "never part" if pd.isna(row["first_part_step"]) else \
            f"first part at step {format_number(row['first_part_step'])}"
        lines.append(
            f"Same trials, same seeds in `{row['other']}`: `{labels.get(row['cell'], row['cell'])}`, "
            f"{row['n_pairs']} trials: {_gap(row)}, against a spread between seeds of "
            f"{_rel(row['seed_spread'])} and an arm effect of {_rel(row['arm_effect'])}; adapters bitwise "
            f"equal {row['adapters_equal']}; training-loss curves {part}.")
    return lines


def answer_labels(r: Results) -> dict[str, str]:
    """Short labels of this study's cells and of the compared studies' (prefixed by study)."""
    cells = list(plots.cell_order(r.study.runs))
    own = L.short_labels(cells)
    for other in r.others:
        theirs = L.short_labels(plots.cell_order(other.runs))
        own |= {f"{other.name}: {c}": f"{other.name} · {label}" for c, label in theirs.items()}
    return own


def _with_others(r: Results) -> pd.DataFrame:
    frames = [r.study.runs] + [o.runs.assign(cell=o.name + ": " + o.runs["cell"]) for o in r.others]
    return pd.concat(frames, ignore_index=True).copy() if r.others else r.study.runs


def _edge_answer(doc: Doc, r: Results) -> None:
    e = LR_EDGE.of(r)
    names = prose_edge.arm_labels(e.rates)
    doc.figure("answer", plots_edge.perplexity_vs_lr(e.outcomes, e.rates, e.edges, names, r.config.blowup_k),
               "Held-out perplexity against the learning rate, one dot per finished run (log scales); "
               f"dashed: the base model, dotted: blow-up at {format_number(r.config.blowup_k)} × base; "
               "vertical: each arm's edge")
    _details(doc, r)
    doc.bullets(prose_edge.answer_lines(e, names, r.config.alpha) + [GPU_TEST])


def _details(doc: Doc, r: Results) -> None:
    """What the numbers below the figure are: runs, the perplexity definition, a lock warning."""
    runs = r.study.runs
    doc.para(f"{len(runs)} runs in {runs['cell'].nunique()} cells; " + ", ".join(
        f"{k} {v}" for k, v in sorted(r.status_counts.items())) + ". "
        f"Perplexity here: {plots.metric_label(PRIMARY_METRIC)}, exp(total NLL / target tokens) "
        f"over the held-out split (`{PRIMARY_METRIC}`); what each arm really ran (optimizer state, "
        "device, dtype) is under *Held-out perplexity*, setup in the appendix.")
    lock = prose.lock_line(r.lock)
    if lock and lock.startswith("WARNING"):  # runs from different locks or unlocked
        doc.para(lock)
    mixed = provenance_warning(r)
    if mixed:
        doc.para(mixed)


def provenance_warning(r: Results) -> str | None:
    """A study whose runs mix commits, dirty trees, numerics fingerprints or torch thread counts (worker
    layouts), said with the runs named."""
    mix = provenance.mix(r.provenance)
    if not mix.mixed:
        return None
    labels = L.short_labels(list(plots.cell_order(r.study.runs)))
    parts = []
    if len(mix.commits) > 1:
        parts.append(f"{len(mix.commits)} commits (" + ", ".join(f"{c}: {n}" for c, n in mix.commits.items())
                     + " runs)")
    if mix.dirty:
        named = ", ".join(f"`{labels.get(c, c)}` t{t}" for c, t in mix.dirty)
        parts.append(f"{len(mix.dirty)} run(s) started on a dirty tree ({named})")
    if mix.split_cells:
        parts.append("cells whose numerics fingerprints differ between trials: " + ", ".join(
            f"`{labels.get(c, c)}` ({n} fingerprints)" for c, n in mix.split_cells.items()))
    causes = "another commit or an edited tree"
    if len(mix.threads) > 1:
        parts.append("worker layouts: " + ", ".join(f"{n} run(s) with {t} torch thread{'' if t == '1' else 's'}"
                                                     for t, n in mix.threads.items()))
        causes = "another commit, an edited tree or another thread count"
    return ("WARNING: the runs mix " + "; ".join(parts) + f". The same seeds may give other numbers under {causes}: "
            "compare runs within one commit and fingerprint (appendix).")


def answer(doc: Doc, r: Results) -> Tables:
    """The Answer: the headline (at most three sentences), its one figure, then the details."""
    doc.heading("Answer")
    said = headline.headline(r)
    if said:
        doc.para(said)
    edge, horizon = LR_EDGE.of(r), SURVIVAL.of(r)
    if horizon is None and edge is not None and not edge.rates.empty:
        _edge_answer(doc, r)
        return {}
    runs = r.study.runs
    labels = answer_labels(r)
    if horizon is not None:  # a horizon study: the Kaplan–Meier curves answer it
        doc.figure("answer", sections_survival.answer_figure(r),
                   "Share of runs not yet blown up against the optimizer step, per arm (Kaplan–Meier, with "
                   "its confidence band); details under *Time to blow-up*")
    else:
        doc.figure("answer", plots.metric_by_cell(_with_others(r), PRIMARY_METRIC, labels=labels),
                   f"{plots.metric_label(PRIMARY_METRIC)} per trial, by arm"
                   + (" (the compared studies beside)" if r.others else "")
                   + "; bar: median; grey lines join a trial's seed-matched arms")
    _details(doc, r)
    rows = list(r.equivalence.iterrows())
    lines = [comparison_line(r, row, labels) for _, row in rows[:MAX_LINES]]
    if len(rows) > MAX_LINES:
        lines.append(f"… and {len(rows) - MAX_LINES} more comparisons under *Arm comparisons*.")
    compared = set(r.equivalence["x"]) | set(r.equivalence["y"])
    lines += [cell_line(r, c, labels) for c in plots.cell_order(runs) if c not in compared][:MAX_LINES]
    lines += sections_tasks.answer_lines(r, labels)[:MAX_LINES]  # task scores (eval.tasks), when recorded
    ofat = SOURCES.of(r).ofat
    if not ofat.empty:  # a study of the seed sources: which one moves the result, first
        lines = prose.variance_answer(ofat, where=sections_variance.where(runs)) + lines
    doc.bullets(lines + compare_lines(r) + reproducibility_lines(r, labels))
    legend = L.legend(labels)
    doc.table(legend.set_index("label"), "Arm labels used in this report and the cells they stand for")
    return {"arm_labels": (legend, "Arm labels and cells")}


ANSWER = Section("answer", present=answer)
