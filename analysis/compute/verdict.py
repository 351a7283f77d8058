"""The per-cell verdict (identical adapters? identical greedy text? perplexity spread?), the bitwise
checks behind it, which lock files the runs came from and what differs in a cell's environment. As
categories and counts: :mod:`analysis.present.verdict_words` says them in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import pandas as pd

from analysis.compute.curves import within_cell_parting
from analysis.compute.stats import PRIMARY_METRIC, describe, metric_values
from analysis.load import FINISHED, column, is_imported
from repeatability.config.run import SEED_SOURCES
from repeatability.records.summary import COLUMNS as S

VARYING_RULES = ("trial", "entropy")  # seed rules that give each trial its own seed


def varying_seeds(rows: pd.DataFrame) -> list[str]:
    """Seed sources whose value differs between the given runs (``seeds.<source>``)."""
    return [s for s in SEED_SOURCES if column(rows, getattr(S.seeds, s)).dropna().nunique() > 1]


def varied_sources(rows: pd.DataFrame) -> list[str]:
    """Seed sources that vary across the given runs by design (rule ``trial``/``entropy`` in
    ``seeds.rules``); runs recorded without rules: the sources whose seed values differ."""
    rules = {s: column(rows, getattr(S.seeds.rules, s)) for s in SEED_SOURCES}
    if not any(r.notna().any() for r in rules.values()):
        return varying_seeds(rows)
    return [s for s, r in rules.items() if r.isin(VARYING_RULES).any()]


def _greedy_identity(gens: pd.DataFrame, cell: str) -> tuple[int, int]:
    """(prompts whose greedy completion is the same in every finished trial, prompts)."""
    rows = gens[(gens["cell"] == cell) & (gens["mode"] == "greedy") & gens["status"].isin(FINISHED)]
    if rows.empty:
        return 0, 0
    distinct = rows.groupby("prompt_index")["completion"].nunique(dropna=False)
    return int((distinct == 1).sum()), int(distinct.size)


def recorded_seeds(rows: pd.DataFrame) -> bool:
    """Whether any of the runs recorded a seed of a training source (imported runs: never)."""
    return any(column(rows, getattr(S.seeds, s)).notna().any() for s in SEED_SOURCES)


class Repeatability(StrEnum):
    """What a cell's finished trials showed (the ``verdict`` of :func:`cell_verdicts`)."""

    TOO_FEW = "fewer than 2 finished runs"
    UNKNOWN = "unknown: no adapter or seed recorded"
    BITWISE = "every adapter identical"
    GREEDY_ONLY = "adapters not recorded, greedy outputs identical"
    SAME_GREEDY = "adapters differ, greedy outputs identical"
    SEEDS_VARY = "trials differ, as their seeds do"
    SAME_SEEDS_UNKNOWN = "unknown: no adapter recorded, identical seeds"
    NOT_REPEATABLE = "adapters differ under identical seeds"


def _repeatability(n: int, adapters: int, same_greedy: int, n_prompts: int, seeds_varied: bool,
                   seeds_recorded: bool = True) -> Repeatability:
    """Trials meant to differ (seeds vary) are not called "not repeatable", and trials with no
    evidence either way (no adapter hash, no seed) are called unknown."""
    if n < 2:
        return Repeatability.TOO_FEW
    if adapters == 0 and not seeds_recorded:
        return Repeatability.UNKNOWN
    if adapters == 1:
        return Repeatability.BITWISE
    if n_prompts and same_greedy == n_prompts:
        return Repeatability.SAME_GREEDY if adapters else Repeatability.GREEDY_ONLY
    if seeds_varied:
        return Repeatability.SEEDS_VARY
    return Repeatability.SAME_SEEDS_UNKNOWN if adapters == 0 else Repeatability.NOT_REPEATABLE


def cell_verdicts(runs: pd.DataFrame, gens: pd.DataFrame,
                  metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per cell: finished runs, distinct adapter hashes, greedy identity, spread, and the
    ``verdict`` (:class:`Repeatability`).

    ``seeds_varied`` names the seed sources that differ across the cell's trials: when it is
    non-empty, differences between trials are *expected* (they are what the study measures).
    """
    out = []
    for cell, group in runs.groupby("cell", sort=True):
        done = group[group["status"].isin(FINISHED)]
        hashes = column(done, S.adapter.sha256).dropna()
        same, n_prompts = _greedy_identity(gens, str(cell))
        varied = varying_seeds(done)
        spread = describe(metric_values(runs, str(cell), metric).to_numpy())["spread"]
        out.append({"cell": cell, "n_finished": len(done),
                    "n_distinct_adapters": int(hashes.nunique()),
                    "adapters_identical": len(done) >= 2 and hashes.nunique() == 1
                    and len(hashes) == len(done),
                    "greedy_prompts_identical": f"{same}/{n_prompts}",
                    "greedy_identical": n_prompts > 0 and same == n_prompts,
                    "ppl_spread": spread,
                    "seeds_varied": (", ".join(varied) or "none") if recorded_seeds(done)
                    else "not recorded",
                    "verdict": _repeatability(len(done), int(hashes.nunique()), same, n_prompts,
                                              bool(set(varied) - {"generation"}), recorded_seeds(done))})
    return pd.DataFrame(out)


BITWISE_COLUMNS = ("cell", "bitwise", "n_finished", "seeds_recorded", "adapters_recorded", "adapters_distinct",
                   "adapters_alike", "curve_pairs", "curve_pairs_identical", "curve_first_step", "greedy_identical",
                   "greedy_prompts", "seeds_varied")


def _bitwise(row: dict) -> bool | None:
    """Every check of one cell passed (curves or generations not recorded pass); ``None`` when
    nothing was recorded to judge (no adapter hash and no seed), ``False`` below two finished runs."""
    if row["n_finished"] < 2:
        return False
    if row["adapters_recorded"] == 0 and not row["seeds_recorded"]:
        return None
    adapters = row["adapters_recorded"] == row["n_finished"] and row["adapters_distinct"] == 1
    curves = row["curve_pairs_identical"] == row["curve_pairs"]
    greedy = row["greedy_identical"] == row["greedy_prompts"]
    return adapters and curves and greedy


def bitwise_verdicts(runs: pd.DataFrame, curves: pd.DataFrame, gens: pd.DataFrame,
                     parting: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell (:data:`BITWISE_COLUMNS`): ``bitwise`` (every adapter's SHA-256 equal, every
    training-loss curve identical at every step, every greedy completion identical; curves or
    generations not recorded count as passing; :func:`_bitwise`) and the counts behind it: finished
    runs, adapter hashes recorded, distinct and the most alike, pairs of trials whose curves were
    compared and never part (``curve_first_step``: where the first pair parts), prompts whose greedy
    completion is identical, and the seed sources varied by design (:func:`varied_sources`).

    ``parting``: :func:`analysis.compute.curves.within_cell_parting` of ``curves`` (atol 0), when the
    caller has it.
    """
    within = (within_cell_parting(curves) if parting is None else parting).set_index("cell")
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        done = group[group["status"].isin(FINISHED)]
        hashes = column(done, S.adapter.sha256).dropna()
        curve = within.loc[cell] if cell in within.index else None
        same, n_prompts = _greedy_identity(gens, str(cell))
        row = {"cell": cell, "n_finished": len(done), "seeds_recorded": recorded_seeds(done),
               "adapters_recorded": len(hashes), "adapters_distinct": int(hashes.nunique()),
               "adapters_alike": int(hashes.value_counts().max()) if len(hashes) else 0,
               "curve_pairs": int(curve["n_pairs"]) if curve is not None else 0,
               "curve_pairs_identical": int(curve["n_pairs_identical"]) if curve is not None else 0,
               "curve_first_step": float(curve["first_step"]) if curve is not None else math.nan,
               "greedy_identical": same, "greedy_prompts": n_prompts, "seeds_varied": tuple(varied_sources(done))}
        rows.append(row | {"bitwise": _bitwise(row)})
    return pd.DataFrame(rows, columns=list(BITWISE_COLUMNS))


@dataclass(frozen=True)
class LockStatus:
    """Which lock files the study's runs were installed from (``environment.json`` key ``lock``).

    ``locks`` maps each lock (``file sha256[:12]``) to the runs that matched it exactly;
    ``unlocked`` counts runs whose environment differed from its lock or found none;
    ``unrecorded`` runs written before the harness recorded locks (summary schema < 4)."""

    locks: dict[str, int]
    unlocked: int
    unrecorded: int

    @property
    def mixed(self) -> bool:
        """True when the runs did not all come from one lock, exactly."""
        return len(self.locks) > 1 or (self.unlocked > 0) or (bool(self.locks) and self.unrecorded > 0)


def lock_status(runs: pd.DataFrame) -> LockStatus:
    """Count the study's runs (imported ones aside: they have no environment) per lock."""
    own = runs[~is_imported(runs)]
    lock_cols = [c for c in own.columns if c.startswith("environment.lock.")]
    recorded = own[own[lock_cols].notna().any(axis=1)] if lock_cols else own.iloc[:0]
    locks: dict[str, int] = {}
    unlocked = 0
    for _, run in recorded.iterrows():
        if run.get("environment.lock.matches") in (True,):
            key = f"{run['environment.lock.file']} {str(run['environment.lock.sha256'])[:12]}"
            locks[key] = locks.get(key, 0) + 1
        else:
            unlocked += 1
    return LockStatus(locks=locks, unlocked=unlocked, unrecorded=len(own) - len(recorded))


def environment_differences(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell, every ``environment.*`` key whose recorded value is not the same in all of the
    cell's runs (a different torch, GPU or commit inside one cell confounds its variance).
    """
    keys = sorted(c for c in runs.columns if c.startswith("environment."))
    out = []
    for cell, group in runs.groupby("cell", sort=True):
        for key in keys:
            values = group[key].dropna().astype(str)
            if values.nunique() > 1:
                trial = group.loc[values.index, "trial"]
                trials = {v: ",".join(str(t) for t in sorted(trial[values == v]))
                          for v in sorted(values.unique())}
                out.append({"cell": cell, "key": key.removeprefix("environment."),
                            "values (trials)": "; ".join(f"{v} ({t})" for v, t in trials.items())})
    return pd.DataFrame(out, columns=["cell", "key", "values (trials)"])
