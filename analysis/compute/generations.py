"""Generations across trials: side-by-side tables (paper Tables 4–9) and agreement measures.

Greedy completions answer "did the fine-tuned weights change what the model says?"; sampled
ones mix that with the generation seed (per trial or fixed: see ``seeds.generation``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from analysis.load import FINISHED


def _finished(gens: pd.DataFrame) -> pd.DataFrame:
    return gens[gens["status"].isin(FINISHED)]


def side_by_side(gens: pd.DataFrame, prompt_index: int, mode: str = "greedy",
                 field: str = "completion") -> pd.DataFrame:
    """Rows = trial, columns = cell, values = ``field`` for one prompt and mode (Tables 4–7)."""
    rows = _finished(gens)
    rows = rows[(rows["prompt_index"] == prompt_index) & (rows["mode"] == mode)]
    table = rows.pivot_table(index="trial", columns="cell", values=field, aggfunc="first")
    table.index.name = "trial"
    table.columns.name = None
    return table


def answer_letters(gens: pd.DataFrame, mode: str = "greedy") -> pd.DataFrame:
    """Rows = trial, columns = (cell, prompt_index), values = the A–D letter or "" (Tables 8/9).

    Only prompts for which some run extracted a letter (multiple-choice prompts) appear.
    """
    rows = _finished(gens)
    rows = rows[rows["mode"] == mode]
    if "answer_letter" not in rows.columns:
        return pd.DataFrame()
    mc = rows.groupby("prompt_index")["answer_letter"].apply(lambda s: s.notna().any())
    rows = rows[rows["prompt_index"].isin(mc[mc].index)].fillna({"answer_letter": ""})
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="trial", columns=["cell", "prompt_index"],
                             values="answer_letter", aggfunc="first")
    return table.fillna("")


def pairwise_exact_match(texts: Sequence[str]) -> float:
    """Fraction of unordered pairs of texts that are identical (NaN for fewer than 2 texts)."""
    pairs = list(combinations(texts, 2))
    return float(np.mean([a == b for a, b in pairs])) if pairs else float("nan")


def mean_pairwise_similarity(texts: Sequence[str]) -> float:
    """Mean ``difflib.SequenceMatcher(None, a, b).ratio()`` over unordered pairs (1 = same).

    Character-level, without the junk heuristic (``autojunk=False``) so long completions are
    not judged on a thinned alphabet. NaN for fewer than 2 texts.
    """
    pairs = list(combinations(texts, 2))
    if not pairs:
        return float("nan")
    ratios = [difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() for a, b in pairs]
    return float(np.mean(ratios))


def agreement(gens: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, prompt_index, mode): n trials, distinct completions, exact-match rate,
    mean pairwise similarity, and for multiple-choice prompts the distinct answer letters and
    the letter agreement (fraction of trial pairs giving the same letter; no letter counts as
    an answer of its own).
    """
    rows = []
    for (cell, prompt, mode), group in _finished(gens).groupby(["cell", "prompt_index", "mode"]):
        texts = [str(t) for t in group.sort_values("trial")["completion"].fillna("")]
        all_letters = group.sort_values("trial").get("answer_letter",
                                                        pd.Series(dtype=object))
        letters = all_letters.dropna()
        rows.append({"cell": cell, "prompt_index": int(prompt), "mode": mode,
                     "prompt": str(group["prompt"].iloc[0]) if "prompt" in group else "",
                     "n": len(texts), "n_distinct": len(set(texts)),
                     "exact_match": pairwise_exact_match(texts),
                     "similarity": mean_pairwise_similarity(texts),
                     "n_distinct_letters": int(letters.nunique()) if len(letters) else np.nan,
                     "letter_agreement": pairwise_exact_match(
                         [str(v) if v is not None else "" for v in all_letters.fillna("")])
                     if len(letters) else np.nan})
    return pd.DataFrame(rows, columns=["cell", "prompt_index", "mode", "prompt", "n",
                                       "n_distinct", "exact_match", "similarity",
                                       "n_distinct_letters", "letter_agreement"])


def prompts(gens: pd.DataFrame) -> pd.DataFrame:
    """The distinct prompts (``prompt_index``, ``prompt``), in index order."""
    if gens.empty or "prompt" not in gens.columns:
        return pd.DataFrame(columns=["prompt_index", "prompt"])
    return (gens[["prompt_index", "prompt"]].drop_duplicates("prompt_index")
            .sort_values("prompt_index", ignore_index=True))


@dataclass(frozen=True)
class PromptTable:
    """One prompt's completions side by side (Tables 4–7 shape)."""

    dataset: str
    prompt_index: int
    prompt: str
    mode: str
    table: pd.DataFrame


@dataclass(frozen=True)
class GenerationResults:
    """The generations section's numbers (:func:`generation_results`): :func:`agreement` between
    trials, every prompt's completions side by side per dataset and mode, and the answer letters
    (Tables 8/9) per dataset with multiple-choice prompts."""

    agreement: pd.DataFrame
    tables: tuple[PromptTable, ...]
    answer_letters: dict[str, pd.DataFrame]


def generation_results(gens: pd.DataFrame) -> GenerationResults:
    """Agreement between trials, every prompt side by side, answer letters (per dataset)."""
    if gens.empty:
        return GenerationResults(pd.DataFrame(), (), {})
    prompt_tables, letters = [], {}
    for dataset, rows in gens.groupby("dataset", sort=True):
        for _, p in prompts(rows).iterrows():
            prompt_tables += [PromptTable(str(dataset), int(p["prompt_index"]), str(p["prompt"]), mode,
                                          side_by_side(rows, int(p["prompt_index"]), mode))
                              for mode in sorted(rows["mode"].dropna().unique())]
        table = answer_letters(rows)
        if not table.empty:
            letters[str(dataset)] = table
    return GenerationResults(agreement(gens), tuple(prompt_tables), letters)
