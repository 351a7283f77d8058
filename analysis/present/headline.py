"""The report's headline: at most three plain sentences that answer the study's question, each
number with its n and interval, every word computed from :class:`~analysis.compute.results.Results`
(and the numbers of the sections it quotes, through their :class:`~analysis.present.section.Section`).

Which question depends on the study: a horizon study — how often each arm blew up, and when; a
learning-rate edge study — where each arm tips over and what
that says about the paper; a study of the seed sources — which source moves perplexity most; a study
of arms (e.g. 8-bit vs 32-bit) — how far identical trials fall apart and whether the arms differ.
When the same trials ran elsewhere with the same seeds (a published reference, ``--compare``), the
last sentence says whether this machine reproduced them.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from analysis.compute.results import Results
from analysis.compute.stats import PRIMARY_METRIC
from analysis.config import AnalysisConfig
from analysis.load import column, is_imported
from analysis.present import labels as L
from analysis.present import plots, prose, prose_edge, sections_survival
from analysis.present.sections_edge import LR_EDGE
from analysis.present.sections_variance import SOURCES
from analysis.present.verdict_words import margin_text
from repeatability.records.summary import COLUMNS as S

MAX_SENTENCES = 3
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z`]|\s*$)")


def count_sentences(text: str) -> int:
    """Sentences in ``text``: a full stop (or ! ?) followed by a capital, a backtick or the end."""
    return len(_SENTENCE_END.findall(text.strip()))


def rel_percent(value: float, signed: bool = False) -> str:
    """A relative difference in percent: 2 significant digits below 1% (2.1e-4 → 0.021%), one
    decimal above (0.0246 → 2.5%); ``signed`` writes + or −."""
    if value is None or pd.isna(value):
        return "–"
    sign = ("+" if value > 0 else "−" if value < 0 else "±") if signed else ("−" if value < 0 else "")
    magnitude = abs(value) * 100
    return f"{sign}{magnitude:.2g}%" if magnitude < 1 else f"{sign}{magnitude:.1f}%"


def verdict_words(row: pd.Series, config: AnalysisConfig) -> str:
    """``equivalent within ±1% (TOST p = 0.003)`` / ``different (paired t-test p = 2e-04)`` /
    ``inconclusive (TOST p = 0.2, paired t-test p = 0.4)``: what the pair's tests earned."""
    if row["tost_p"] < config.alpha:
        return f"equivalent within {margin_text(config)} (TOST p = {prose.p_text(row['tost_p'])})"
    if row["diff_p"] < config.alpha:
        return f"different ({row['diff_test']} p = {prose.p_text(row['diff_p'])})"
    return (f"inconclusive at α = {config.alpha:g} (TOST p = {prose.p_text(row['tost_p'])} for "
            f"{margin_text(config)}, {row['diff_test']} p = {prose.p_text(row['diff_p'])})")


def _verdict_or_unknown(row: pd.Series, config: AnalysisConfig) -> str:
    if pd.isna(row["tost_p"]) and pd.isna(row["diff_p"]):
        return "unknown (too few trials for a test)"
    return verdict_words(row, config)


def direction_words(r: Results, row: pd.Series, labels: dict[str, str]) -> str:
    """When the difference test sees a shift: which arm is higher, in how many of the paired trials."""
    if not row["diff_p"] < r.config.alpha or row["design"] != "paired" or r.comparisons.empty:
        return ""
    c = r.comparisons
    match = c[(c["x"] == row["x"]) & (c["y"] == row["y"]) & (c["metric"] == PRIMARY_METRIC)]
    if match.empty or pd.isna(match["n_pairs"].iloc[0]):
        return ""
    higher, n = int(match["n_pairs_positive"].iloc[0]), int(match["n_pairs"].iloc[0])
    up = row["ratio_gmean"] > 1
    arm = labels.get(row["x"] if up else row["y"], "")
    count = higher if up else n - higher
    if row["tost_p"] < r.config.alpha:  # equivalent, yet a consistent direction
        return (f"; the paired test still sees the shift: `{arm}` higher in {count}/{n} pairs "
                f"({row['diff_test']} p = {prose.p_text(row['diff_p'])})")
    return f", `{arm}` higher in {count}/{n} pairs"


def _labels(r: Results) -> dict[str, str]:
    return L.short_labels(list(plots.cell_order(r.study.runs)))


def spread_sentence(r: Results, cells: list[str]) -> str | None:
    """How far identical trials fall apart: each cell's max/min perplexity over its trials."""
    v = r.verdicts.set_index("cell")
    labels = _labels(r)
    parts = []
    for cell in cells:
        if cell not in v.index or pd.isna(v.loc[cell, "ppl_spread"]):
            continue
        n = int(v.loc[cell, "n_finished"])
        if n < 2:  # one trial has no spread: say nothing rather than 0%
            continue
        parts.append(f"{rel_percent(v.loc[cell, 'ppl_spread'] - 1)} for `{labels.get(cell, cell)}` (n = {n})")
    if not parts:
        return None
    return ("Identical trials fell apart: held-out perplexity varied by " + " and ".join(parts)
            + " between the best and the worst trial of an arm.")


def arm_sentence(r: Results) -> str | None:
    """The first arm comparison: the ratio with its CI and n, and what the tests earned."""
    if r.equivalence.empty:
        return None
    row = r.equivalence.iloc[0]
    labels = _labels(r)
    if not math.isfinite(row["ratio_gmean"]):
        return None
    plural = "" if row["n_x"] == 1 else "s"
    n = f"{row['n_x']} paired trial{plural}" if row["design"] == "paired" else f"{row['n_x']} + {row['n_y']} trials"
    shift = row["ratio_gmean"] - 1
    ci = ""
    if pd.notna(row["ratio_ci_low"]):
        ci = (f", {1 - r.config.alpha:.0%} CI {rel_percent(row['ratio_ci_low'] - 1, signed=True)} to "
              f"{rel_percent(row['ratio_ci_high'] - 1, signed=True)}")
    return (f"`{labels.get(row['x'], row['x'])}` vs `{labels.get(row['y'], row['y'])}` moved perplexity by "
            f"{rel_percent(shift, signed=True)} ({n}{ci}): {_verdict_or_unknown(row, r.config)}"
            f"{direction_words(r, row, labels)}.")


def reproduction_sentence(r: Results) -> str | None:
    """Whether the same trials with the same seeds gave the same bits here as in the compared study."""
    if r.cross_trials.empty:
        return None
    pairs = r.cross_trials
    other = str(pairs["other"].iloc[0])
    pairs = pairs[pairs["other"] == other]
    equal = pairs["adapter_equal"].dropna().astype(bool)
    rel = pairs["rel_diff"].abs()
    n = len(pairs)
    spread = r.verdicts["ppl_spread"].dropna()
    seed_spread = f"{rel_percent(spread.max() - 1)}" if len(spread) else "unknown"
    where = _where(r, r.study.name, ours=True)
    there = _where(r, other, ours=False)
    if len(equal) == n and equal.all():
        return (f"This machine{where} reproduced `{other}`{there} bit for bit: all {n} seed-matched runs "
                "gave the same adapter (SHA-256) and the same perplexity.")
    same_bits = f"{int(equal.sum())}/{len(equal)}" if len(equal) else "no recorded"
    return (f"This machine{where} did not reproduce `{other}`{there} bit for bit: {same_bits} seed-matched runs "
            f"gave the same adapter, and perplexity differs by at most {rel_percent(rel.max())} (n = {n}) against a "
            f"spread between seeds of {seed_spread}.")


def compared_rates_sentence(r: Results) -> str | None:
    """With compared studies but no seed-matched trials (e.g. a published table): each arm's
    blow-ups here beside theirs, with exact CIs."""
    pooled = r.compare_pooled
    if pooled.empty or not r.cross_trials.empty:
        return None
    own = r.study.name
    parts = []
    for arm, group in pooled.groupby("arm", sort=False):
        rows = {row["study"]: row for _, row in group.iterrows()}
        if own not in rows or len(rows) < 2:
            continue
        texts = [f"{int(row['blowups'])}/{int(row['n'])} [{row['ci_low']:.0%}, {row['ci_high']:.0%}] in `{study}`"
                 for study, row in rows.items()]
        parts.append(f"`{L.optim_words(arm)}` " + " vs ".join(texts))
    if not parts:
        return None
    return "Blow-ups with 95% exact CIs: " + "; ".join(parts) + setup_contrast(r) + "."


# what the paper ran (Alahmari et al. 2024, §III): fixed facts, set beside what this study's runs recorded
PAPER_SETUP = "7B–20B models, ~6,000 steps, fp16 compute on an A100"


def setup_contrast(r: Results) -> str:
    """``; the setups differ: here smollm2-135m, 200 steps, float32 compute on cpu; the paper ...``:
    read from the runs, when a compared study is an imported (published) table."""
    if not any(is_imported(o.runs).any() for o in r.others):
        return ""
    runs = r.study.runs
    models = sorted(set(runs.loc[~is_imported(runs), "model"].dropna().astype(str)))
    steps = pd.to_numeric(column(runs, S.metrics.steps), errors="coerce").dropna()
    dtype = sorted(set(column(runs, S.device.compute_dtype).dropna().astype(str)))
    device = sorted(set(column(runs, S.device.type).dropna().astype(str)))
    if not models or steps.empty:
        return ""
    return (f"; the setups differ: here {', '.join(models)}, {int(steps.max()):,} steps, "
            f"{'/'.join(dtype)} compute on {'/'.join(device)}; the paper {PAPER_SETUP}")


def _where(r: Results, study: str, ours: bool) -> str:
    """`` (AMD EPYC, 2 torch threads)``: where a study of :attr:`Results.cross_machines` ran (its first
    row is this study; a reproduction of a published study may share its name)."""
    m = r.cross_machines
    rows = m.iloc[:1] if ours else m.iloc[1:][m.iloc[1:]["study"] == study]
    if rows.empty:
        return ""
    cpu, threads = rows["cpu"].iloc[0], rows["torch_threads"].iloc[0]
    return f" ({cpu}, {threads} torch thread{'' if threads == '1' else 's'})"


def edge_sentences(r: Results) -> list[str]:
    """A learning-rate edge study: where each arm tips over, and the paper's LR against it."""
    e = LR_EDGE.of(r)
    labels = prose_edge.arm_labels(e.rates)
    edges = e.edges.set_index("arm")
    parts = [prose_edge.edge_phrase(edges.loc[a], label) for a, label in labels.items() if a in edges.index]
    first = ("Training tipped over (at least half of the runs blew up) " + "; ".join(parts) + ".") if parts else None
    paper = prose_edge.paper_phrase(e, labels)
    inflation = prose_edge.inflation_phrase(e.at_end, labels)
    return [s for s in (first, inflation, paper) if s]


def variance_sentences(r: Results) -> list[str]:
    """A study of the seed sources: the first group's answer, its first sentence only."""
    lines = prose.variance_answer(SOURCES.of(r).ofat)
    if not lines:
        return []
    end = _SENTENCE_END.search(lines[0])
    return [lines[0][: end.end()] if end else lines[0]]


def sentences(r: Results) -> list[str]:
    """The headline sentences for this study (at most :data:`MAX_SENTENCES`)."""
    edge = LR_EDGE.of(r)
    if sections_survival.SURVIVAL.of(r) is not None:  # a horizon study: blow-up rates and time to blow-up per arm
        out = sections_survival.headline_sentences(r)
    elif edge is not None and not edge.rates.empty:
        out = edge_sentences(r)
    elif not SOURCES.of(r).ofat.empty:
        out = variance_sentences(r)
        arm = arm_sentence(r)
        out += [arm] if arm else []
    else:
        compared = list(r.equivalence.iloc[0][["x", "y"]]) if not r.equivalence.empty else \
            list(plots.cell_order(r.study.runs))[:2]
        out = [s for s in (spread_sentence(r, compared), arm_sentence(r)) if s]
    repro = reproduction_sentence(r) or compared_rates_sentence(r)
    out = out[: MAX_SENTENCES - 1] + [repro] if repro else out
    return [s for s in out if s][:MAX_SENTENCES]


def headline(r: Results) -> str:
    """The headline paragraph; ``""`` when the study has nothing to say yet (no finished run)."""
    if not len(r.study.runs) or PRIMARY_METRIC not in r.study.runs.columns:
        return ""
    return " ".join(sentences(r))
