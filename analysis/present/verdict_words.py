"""Verdicts in words: what the compute layer decided, as categories, counts and p-values, said the
way the report writes it. Per cell: repeatable? (:func:`analysis.compute.verdict.cell_verdicts`), the
bitwise checks (:func:`analysis.compute.verdict.bitwise_verdicts`) and the clusters of its
perplexities (:func:`analysis.compute.blowups.arm_rates`); per comparison of two arms: equivalent,
different or inconclusive, on perplexity (:func:`analysis.compute.equivalence.comparisons`) and on each
task score (:func:`analysis.compute.task_scores.compare`). Each ``*_in_words`` function returns the
frame as the report shows and writes it: the category column replaced by its sentence, in place.

The words claim only what a test earned: "equivalent within ±m" only when TOST p < α, "different"
only when the difference test p < α, otherwise "inconclusive with n trials".
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.compute.verdict import Repeatability
from analysis.config import AnalysisConfig
from analysis.present.formatting import format_number

UNKNOWN = "unknown (no adapters or seeds recorded)"


def margin_text(config: AnalysisConfig) -> str:
    """The declared perplexity margin as the report writes it: 0.01 → ``±1%``."""
    return f"±{config.margin * 100:g}%"


def task_margin_text(config: AnalysisConfig) -> str:
    """The task margin as the report writes it: 0.01 → ``±1 point``."""
    points = config.task_margin * 100
    return f"±{points:g} point{'' if points == 1 else 's'}"


def repeatability_text(verdict: Repeatability, adapters: int, spread: float) -> str:
    """One cell's verdict as a sentence; ``adapters``: distinct adapter hashes, ``spread``: max/min
    perplexity over its finished trials."""
    found = f"{adapters} distinct adapters" if adapters else "adapters not recorded"
    spread_text = f"perplexity max/min = {format_number(spread)}"
    return {Repeatability.TOO_FEW: "fewer than 2 finished runs: nothing to compare",
            Repeatability.UNKNOWN: UNKNOWN,
            Repeatability.BITWISE: "bitwise repeatable: every adapter is identical",
            Repeatability.GREEDY_ONLY: "adapters not recorded; greedy outputs are identical",
            Repeatability.SAME_GREEDY: f"weights differ ({found}) but greedy outputs are identical",
            Repeatability.SEEDS_VARY: f"trials differ, as their seeds do: {found}, {spread_text}",
            Repeatability.SAME_SEEDS_UNKNOWN: f"unknown (no adapters recorded; identical seeds), {spread_text}",
            Repeatability.NOT_REPEATABLE: f"NOT repeatable under identical seeds: {found}, {spread_text}"}[verdict]


def cell_verdicts_in_words(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`analysis.compute.verdict.cell_verdicts` with each ``verdict`` as a sentence."""
    return table.assign(verdict=[repeatability_text(v, a, s) for v, a, s in zip(
        table["verdict"], table["n_distinct_adapters"], table["ppl_spread"])])


def _bitwise_parts(row: pd.Series) -> list[str]:
    """The three checks of one cell in words: adapters, loss curves, greedy generations."""
    n = row["n_finished"]
    if row["adapters_recorded"] == n and row["adapters_distinct"] == 1:
        parts = [f"adapters identical ({n}/{n} same SHA-256)"]
    else:
        recorded, distinct, alike = row["adapters_recorded"], row["adapters_distinct"], row["adapters_alike"]
        parts = [f"adapters differ ({distinct} distinct SHA-256 in {recorded} recorded of {n}; at most {alike} alike)"]
    if not row["curve_pairs"]:
        parts.append("no loss curves to compare")
    elif row["curve_pairs_identical"] == row["curve_pairs"]:
        parts.append("loss curves identical")
    else:
        parts.append(f"loss curves part at step {format_number(row['curve_first_step'])}")
    same, prompts = row["greedy_identical"], row["greedy_prompts"]
    if not prompts:
        parts.append("no greedy generations")
    elif same == prompts:
        parts.append("greedy generations identical")
    else:
        parts.append(f"greedy generations identical on {same}/{prompts} prompts")
    return parts


def bitwise_line(row: pd.Series) -> str:
    """One cell of :func:`analysis.compute.verdict.bitwise_verdicts` as one line."""
    cell = row["cell"]
    if row["n_finished"] < 2:
        return f"`{cell}`: {row['n_finished']} finished run(s): nothing to compare"
    if row["bitwise"] is None:
        return f"`{cell}`: {UNKNOWN}"
    varied = row["seeds_varied"]
    if row["bitwise"]:
        end = "bitwise repeatable"
    elif set(varied) - {"generation"}:
        end = f"not bitwise repeatable, as designed (seeds vary: {', '.join(varied)})"
    else:
        end = "NOT bitwise repeatable under identical seeds"
    return f"`{cell}`: " + ", ".join(_bitwise_parts(row)) + f" → {end}"


def bitwise_in_words(table: pd.DataFrame) -> pd.DataFrame:
    """``cell``, ``bitwise`` and ``line`` (:func:`bitwise_line`) per cell of
    :func:`analysis.compute.verdict.bitwise_verdicts`."""
    lines = [bitwise_line(row) for _, row in table.iterrows()]
    return table[["cell", "bitwise"]].assign(line=lines)


def bimodality_note(clusters: list[list[float]], blowups: int, n: int) -> str:
    """An arm's perplexity clusters (:func:`analysis.compute.blowups.clusters`) in words."""
    if len(clusters) > 1:
        sizes = ", ".join(f"{len(p)} at {format_number(p[0])}–{format_number(p[-1])}" for p in clusters)
        return f"split: {len(clusters)} clusters ({sizes})"
    if 0 < blowups < n:
        return "blow-ups and ordinary runs both present, no gap wider than the threshold"
    return "one cluster" if clusters else "no finite perplexity"


def rates_in_words(rates: pd.DataFrame) -> pd.DataFrame:
    """:func:`analysis.compute.blowups.arm_rates` with the ``clusters`` as a note, ``bimodality``."""
    notes = [bimodality_note(c, b, n) for c, b, n in zip(rates["clusters"], rates["blowups"], rates["n"])]
    return rates.assign(clusters=notes).rename(columns={"clusters": "bimodality"})


def _trials(design: str, n_x: int, n_y: int) -> str:
    return f"{n_x} paired trials" if design == "paired" else f"{n_x} + {n_y} trials"


def comparison_verdict(row: pd.Series, config: AnalysisConfig) -> str:
    """The words one pair of :func:`analysis.compute.equivalence.comparisons` has earned."""
    tost_p, diff_p, alpha, margin = row["tost_p"], row["diff_p"], config.alpha, margin_text(config)
    mean_log_diff = row["mean_log_diff"]
    ratio = math.exp(mean_log_diff) if math.isfinite(mean_log_diff) else math.nan
    if tost_p < alpha:
        extra = f"; the difference test also finds the small shift, p = {diff_p:.2g}" if diff_p < alpha else ""
        return (f"equivalent within {margin} (TOST p = {tost_p:.2g}; geometric-mean ratio "
                f"X/Y = {ratio:.4g}{extra})")
    if diff_p < alpha:
        return f"different (p = {diff_p:.2g}): geometric-mean ratio X/Y = {ratio:.4g}"
    return (f"inconclusive with {_trials(row['design'], row['n_x'], row['n_y'])}: neither equivalent within "
            f"{margin} (TOST p = {tost_p:.2g}) nor different (p = {diff_p:.2g}) at α = {alpha:g}")


def comparisons_in_words(pairs: pd.DataFrame, config: AnalysisConfig) -> pd.DataFrame:
    """:func:`analysis.compute.equivalence.comparisons` with its ``verdict`` (:func:`comparison_verdict`)."""
    return pairs.assign(verdict=[comparison_verdict(row, config) for _, row in pairs.iterrows()])


def task_verdict(row: pd.Series, config: AnalysisConfig) -> str:
    """The words one row of :func:`analysis.compute.task_scores.compare` has earned; when every paired
    difference is exactly 0 (``all_equal``) the t-based tests degenerate, so no p is quoted."""
    trials = _trials(row["design"], row["n_x"], row["n_y"])
    tost_p, diff_p, margin = float(row["tost_p"]), float(row["diff_p"]), task_margin_text(config)
    if row["all_equal"]:
        return (f"identical in all {trials} (every difference exactly 0; the t-based TOST is degenerate at "
                "zero variance, so no p is given)")
    if tost_p < config.alpha:
        return f"equivalent within {margin} (TOST p = {tost_p:.2g})"
    if diff_p < config.alpha:
        return f"different (p = {diff_p:.2g})"
    return (f"inconclusive with {trials}: neither equivalent within {margin} (TOST p = "
            f"{tost_p:.2g}) nor different (p = {diff_p:.2g}) at α = {config.alpha:g}")


def task_comparisons_in_words(table: pd.DataFrame, config: AnalysisConfig) -> pd.DataFrame:
    """:func:`analysis.compute.task_scores.compare` with a ``verdict`` (:func:`task_verdict`) in place of
    ``all_equal``."""
    verdicts = [task_verdict(row, config) for _, row in table.iterrows()]
    return table.drop(columns=["all_equal"]).assign(verdict=verdicts)
