"""The report's sentences: numbers already computed (:mod:`analysis.compute.results`) said in words.

Nothing here computes a statistic; each function turns a row or a table of a compute module
into text for the present layer (the ``sections*`` modules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis.compute.anova import Design
from analysis.compute.blowups import REFERENCE_BASE
from analysis.compute.power import ALPHA, POWER, RATIOS
from analysis.compute.variance import BASELINE
from analysis.config import AnalysisConfig
from analysis.present.formatting import format_number

if TYPE_CHECKING:
    from analysis.compute.verdict import LockStatus


def p_text(value: float) -> str:
    """A p-value to 2 significant digits; "–" when there is none."""
    return "–" if value is None or pd.isna(value) else f"{value:.2g}"


def _ratio(value: float) -> str:
    return format_number(value) if value >= 100 else f"{value:.3g}"


def comparison_reading(row: dict[str, Any] | pd.Series, alpha: float = 0.05) -> str:
    """One paragraph in plain words for a row of :func:`analysis.compute.stats.compare_all`.

    Says which design was used (seed-matched or not), the direction and size of the shift,
    whether the spreads differ on the log scale, and when the sample is too small for any
    p-value to fall below ``alpha`` (2/2^n for Wilcoxon, 2/C(n_x+n_y, n_x) for Mann-Whitney).
    """
    x, y = row["x"], row["y"]
    if not row["n_x"] or not row["n_y"]:
        return f"`{x}` vs `{y}`: not compared, one arm has no finished trial with a finite value."
    medians = f"{format_number(row['median_x'])} vs {format_number(row['median_y'])}"
    parts = [f"`{x}` (X) vs `{y}` (Y): median perplexity {medians}."]
    if row.get("paired") and row.get("n_pairs", 0) >= 1:
        n = int(row["n_pairs"])
        floor = 2 / 2 ** n
        parts.append(f"With the same seeds in both arms, X was higher in {row['n_pairs_positive']}"
                     f" of {n} trials (Wilcoxon signed-rank p = {p_text(row['wilcoxon_p'])}"
                     + (f"; with {n} pairs no p-value can be below {floor:.2g}" if floor >= alpha
                        else "") + ").")
    else:
        parts.append("The arms are not seed-matched trial by trial (different or unrecorded "
                     "seeds), so trials are not paired.")
    nx, ny = int(row["n_x"]), int(row["n_y"])
    floor = 2 / math.comb(nx + ny, nx) if nx and ny else 1.0
    low, high = row.get("p_x_gt_y_ci_low", math.nan), row.get("p_x_gt_y_ci_high", math.nan)
    ci = "" if pd.isna(low) else f"bootstrap 95% CI {low:.2f}–{high:.2f}; "
    parts.append(f"P(X > Y) = {row['p_x_gt_y']:.2f} ({ci}0.5 = no shift; rank-biserial "
                 f"{row['rank_biserial']:.2f}; Mann-Whitney p = {p_text(row['mwu_p'])}"
                 + (f"; with {nx}+{ny} trials no p-value can be below {floor:.2g}"
                    if floor >= alpha else "") + ").")
    bf = row["bf_log_p"]
    judged = "—" if math.isnan(bf) else ("the spreads differ" if bf < alpha
                                          else "no evidence that the spreads differ")
    parts.append(f"Spread max/min: {_ratio(row['spread_x'])}× vs {_ratio(row['spread_y'])}×; "
                 "Brown-Forsythe on log perplexity "
                 f"p = {p_text(bf)}: {judged} at α = {alpha}.")
    return " ".join(parts)


def _n(value: float) -> str:
    return "more than 10 million" if math.isinf(value) else f"{value:.0f}"


def trials_reading(row: pd.Series | dict, ratios: Sequence[float] = RATIOS, alpha: float = ALPHA,
                   power: float = POWER) -> str:
    """One sentence for a row of :func:`analysis.compute.power.trials_needed`."""
    head = (f"`{row['cell']}` (std of log perplexity {row['std_log']:.3g} over {row['n']} "
            "trials")
    if row["std_log"] == 0:
        return (head + "): no spread at all, so any difference shows in a single trial per arm "
                "— as long as the arms are as deterministic as this cell.")
    parts = [f"{(r - 1):.0%} higher perplexity: {_n(row[f'n_{r:g}'])} trials per arm "
             f"({_n(row[f'n_{r:g}_ci_high'])} at the std's upper 95% bound "
             f"{row['std_log_ci_high']:.3g})" for r in ratios]
    return (head + f"): to detect, at α = {alpha:g} and power {power:g}, " + "; ".join(parts)
            + ".")


def _all(count: str) -> bool:
    """Whether an "i/n" count is complete (i == n > 0)."""
    done, _, total = count.partition("/")
    return count != "–" and done == total and total != "0"


def sampling_line(row: pd.Series | dict) -> str:
    """One line per cell of :func:`analysis.present.sections_variance.sampling_by_cell`, in words."""
    same, greedy = row["samples_identical"], row["equal_greedy"]
    head = (f"`{row['cell']}` ({row['runs']} run(s), temperature / top-p "
            f"{row['temperature / top_p']}): ")
    if same == "–":  # one sample per prompt: nothing to compare across seeds
        return (head + f"K = {row['K']} sample per prompt, so seeds cannot be compared; the "
                f"sample equals greedy in {greedy} (run, prompt) pairs.")
    text = (head + f"K = {row['K']} samples per prompt under {row['min_seeds']}+ different "
            f"seeds: identical to each other in {same} (run, prompt) pairs, identical to "
            f"greedy in {greedy}")
    if _all(same) and _all(greedy):
        return text + " → the generation seed changed nothing: sampling was greedy here."
    if _all(same):
        return text + " → the seed changed nothing, but sampling differs from greedy."
    return text + " → the generation seed changed the text."


def base_statement(table: pd.DataFrame) -> str:
    """One sentence on :func:`analysis.compute.ablations.base_repeats`' table: verified (every spread
    exactly 0) or not, with the largest spread."""
    if table.empty:
        return ("(b) Base-model perplexity repeats: not recorded by any run (set "
                "`eval.base_repeats` > 1).")
    ks = sorted(set(table["k"]))
    scores = table[["min", "max"]].drop_duplicates()
    head = (f"(b) Base-model perplexity scored K = {'/'.join(map(str, ks))} times in each of "
            f"{len(table)} runs ({len(scores)} distinct result(s): runs share the cached score)")
    if table["zero"].all():
        return head + ": max − min = 0 in every run → verified, zero spread."
    worst = table.loc[table["spread"].idxmax()]
    return (head + f": NOT zero in {int((~table['zero']).sum())} run(s); largest spread "
            f"{worst['spread']:.3g} (`{worst['cell']}` trial {worst['trial']}).")


def rate_text(blowups: int, n: int, low: float, high: float) -> str:
    """``4/7 = 57% [18%, 90%]``; ``0/0`` when no run could be judged."""
    if not n:
        return "0/0"
    return f"{blowups}/{n} = {blowups / n:.0%} [{low:.0%}, {high:.0%}]"


def reference_lines(refs: pd.DataFrame, config: AnalysisConfig) -> list[str]:
    """One line per row of :func:`analysis.compute.blowups.references`: which reference was used, its
    value and the threshold."""
    lines = []
    for _, r in refs.iterrows():
        spread = "" if r["min"] == r["max"] or r["reference"] != REFERENCE_BASE else \
            f" (recorded values {format_number(r['min'])}–{format_number(r['max'])})"
        lines.append(f"`{r['model']}` × `{r['dataset']}`: {r['reference']} = "
                     f"{format_number(r['value'])}{spread} from {r['n_values']} run(s); "
                     f"blow-up above {format_number(config.blowup_k)} × that = "
                     f"{format_number(r['threshold'])}")
    return lines


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0%}"


def _floor_text(rows: pd.DataFrame) -> str:
    floor = rows[rows["source"] == BASELINE]
    if floor.empty or floor["variance"].isna().all():
        return ("No all-fixed baseline cell with 2+ finished trials: the floor was not measured "
                "and not subtracted.")
    f = floor.iloc[0]
    if f["variance"] == 0:
        return (f"With every seed fixed (`{f['cell']}`), the {int(f['n'])} trials have identical "
                "perplexity: the floor is 0.")
    return (f"With every seed fixed (`{f['cell']}`), the floor is a std of {f['std']:.3g} "
            f"({_pct(f['share'])} of the variance): non-determinism left when no seed changes.")


def _most_test(top: pd.Series, varied: pd.DataFrame, alpha: float = ALPHA) -> str:
    """`` (significantly more than `lora_init`: F = 7.5 on (2, 2) df, one-sided p = 0.01)`` or
    `` (not significantly more than `lora_init`: ... p = 0.12)``; empty without a second source."""
    if len(varied) < 2 or pd.isna(top.get("f_vs_next")):
        return ""
    nxt = varied.iloc[1]
    word = "significantly" if top["f_p"] < alpha else "not significantly"
    return (f" ({word} more than `{nxt['source']}`: variance ratio F = {top['f_vs_next']:.3g} on "
            f"({int(top['n']) - 1}, {int(nxt['n']) - 1}) df, one-sided p = {p_text(top['f_p'])})")


def variance_answer(table: pd.DataFrame, metric: str = "log perplexity",
                    where: str = "") -> list[str]:
    """One paragraph per group of :func:`analysis.compute.variance.decompose`'s table: which source
    moves ``metric`` most, in numbers (std, the factor exp(std) on perplexity, share with CIs),
    then the others and the floor. ``where`` (e.g. "on cpu (AMD EPYC)") is put into the first
    sentence."""
    out = []
    for group, rows in table[table["metric"] == metric].groupby("group", sort=True):
        varied = rows[(rows["source"] != BASELINE) & rows["variance"].notna()]
        varied = varied.sort_values("component", ascending=False)
        if varied.empty:
            continue
        place = f" {where}" if where else ""
        if not (varied["component"] > 0).any():
            out.append(f"`{group}`{place}: no seed source moved perplexity beyond the floor. "
                       + _floor_text(rows))
            continue
        top = varied.iloc[0]
        test = _most_test(top, varied)
        most = "moves perplexity most" if test.startswith("significantly") else "has the largest std"
        text = (f"`{group}`{place}: `{top['source']}` {most}{test}: std of {metric} "
                f"{top['std']:.3g} (95% CI {top['std_ci_low']:.3g}–{top['std_ci_high']:.3g}), "
                f"i.e. perplexity varies by a factor of about {math.exp(top['std']):.4g} between "
                f"trials; {_pct(top['share'])} of the variance (95% CI "
                f"{_pct(top['share_ci_low'])}–{_pct(top['share_ci_high'])}).")
        rest = [f"`{r['source']}` std {r['std']:.3g} ({_pct(r['share'])})"
                for _, r in varied.iloc[1:].iterrows()]
        if rest:
            text += " Then " + ", ".join(rest) + "."
        out.append(text + " " + _floor_text(rows))
    return out


def design_line(design: Design, runs: pd.DataFrame) -> str:
    """One line per crossed design (:func:`analysis.compute.anova.crossed_designs`): its cells, the
    levels of each factor, its trials and whether the trial is a block."""
    rows = runs[runs["cell"].isin(design.cells)]
    levels = "; ".join(f"{f}: " + ", ".join(sorted(rows[f].astype(str).unique()))
                       for f in design.factors)
    block = ("trial as a block (every cell got the same seeds in a trial)" if design.blocked
             else "trials as replicates (seeds do not change with the trial)")
    return (f"`{design.group}`: {len(design.cells)} cells crossing {levels}; trials "
            f"{', '.join(map(str, design.trials))}, {block}")


def lock_line(status: LockStatus) -> str | None:
    """The report's line on the environments the runs came from: a WARNING when they were not all
    installed from one lock exactly; a plain note when the runs predate lock recording; None
    when every run matched one lock."""
    n_locked = sum(status.locks.values())
    if not status.mixed and status.unrecorded == 0:
        return None
    if not status.mixed:
        return (f"Environment lock: not recorded ({status.unrecorded} run(s) written before the harness "
                "recorded its lock file); their package versions are in the environment appendix.")
    parts = [f"{n} run(s) from {key}" for key, n in sorted(status.locks.items())]
    if status.unlocked:
        parts.append(f"{status.unlocked} run(s) from an environment that differed from its lock or had none")
    if status.unrecorded:
        parts.append(f"{status.unrecorded} run(s) that predate lock recording")
    head = "from different locks" if len(status.locks) > 1 else "not all from one lock"
    return (f"WARNING: the runs came {head}: " + "; ".join(parts) +
            f" ({n_locked} of {n_locked + status.unlocked + status.unrecorded} exactly locked). "
            "Differences between them may be the software's, not the seeds'.")
