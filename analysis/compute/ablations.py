"""The paper's two ablations, checked on every run that recorded them.

(a) Sampling at temperature/top-p 0.1 under different generation seeds vs greedy: each run
samples every prompt K times (``sample_index`` 0..K−1, seed = generation seed + index). Are the
K samples identical to each other, and to the run's greedy completion?
(b) The base model's perplexity scored K times (``metrics.base_perplexity_repeats``): the
spread max − min must be exactly 0 (scoring is deterministic). Runs of one study share the
cached ``_base`` score, so equal lists across runs are one measurement, not many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.load import FINISHED, Study, column
from repeatability.records.summary import COLUMNS as S

SAMPLE_COLUMNS = ("cell", "trial", "prompt_index", "k", "n_seeds", "n_distinct",
                  "samples_identical", "equal_greedy", "temperature", "top_p")


def _sample_order(rows: pd.DataFrame) -> pd.DataFrame:
    key = "sample_index" if "sample_index" in rows and rows["sample_index"].notna().all() else "seed"
    return rows.sort_values(key, na_position="last")


def sampling(gens: pd.DataFrame) -> pd.DataFrame:
    """Per finished run and prompt with sampled rows: K samples, distinct seeds, distinct
    completions, whether the K samples are identical (needs K ≥ 2, else NA) and whether every
    sample equals the greedy completion (NA without a greedy row)."""
    done = gens[gens["status"].isin(FINISHED)]
    rows = []
    for (cell, trial, prompt), group in done.groupby(["cell", "trial", "prompt_index"], sort=True):
        sampled = _sample_order(group[group["mode"] == "sampled"])
        if sampled.empty:
            continue
        texts = sampled["completion"].fillna("").astype(str)
        greedy = group.loc[group["mode"] == "greedy", "completion"].fillna("").astype(str)
        rows.append({"cell": cell, "trial": int(trial), "prompt_index": int(prompt),
                     "k": len(texts), "n_seeds": int(column(sampled, "seed").nunique()),
                     "n_distinct": int(texts.nunique()),
                     "samples_identical": bool(texts.nunique() == 1) if len(texts) > 1 else pd.NA,
                     "equal_greedy": bool((texts == greedy.iloc[0]).all()) if len(greedy)
                     else pd.NA,
                     "temperature": column(sampled, "temperature").iloc[0],
                     "top_p": column(sampled, "top_p").iloc[0]})
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def base_repeats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per finished run that recorded ``metrics.base_perplexity_repeats``: K, min, max, the
    spread recomputed (max − min) and as recorded, and ``zero`` (both exactly 0)."""
    done = runs[runs["status"].isin(FINISHED)]
    rows = []
    for _, run in done.iterrows():
        values = run.get(S.metrics.base_perplexity_repeats)
        if not isinstance(values, (list, tuple)) or not values:
            continue
        numbers = [float(v) for v in values]
        recorded = pd.to_numeric(pd.Series([run.get(S.metrics.base_perplexity_repeat_spread)]),
                                 errors="coerce").iloc[0]
        spread = max(numbers) - min(numbers)
        rows.append({"cell": run["cell"], "trial": int(run["trial"]), "k": len(numbers),
                     "min": min(numbers), "max": max(numbers), "spread": spread,
                     "spread_recorded": float(recorded),
                     "zero": spread == 0 and (math.isnan(recorded) or recorded == 0)})
    return pd.DataFrame(rows, columns=["cell", "trial", "k", "min", "max", "spread",
                                       "spread_recorded", "zero"])


@dataclass(frozen=True)
class AblationResults:
    """The ablations section's numbers (:func:`ablation_results`): (a) :func:`sampling` per run and
    prompt; (b) :func:`base_repeats` (empty frames when no run recorded them)."""

    sampling: pd.DataFrame
    base_repeats: pd.DataFrame


def ablation_results(study: Study) -> AblationResults:
    """Both ablations of ``study``'s runs."""
    return AblationResults(sampling=sampling(study.generations) if not study.generations.empty else pd.DataFrame(),
                           base_repeats=base_repeats(study.runs))
