"""The per-cell verdict (identical adapters? identical greedy text? perplexity spread?) and the
list of what did not run as the config asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.compute.curves import within_cell_parting
from analysis.compute.stats import PRIMARY_METRIC, describe, metric_values
from analysis.compute.tables import format_number
from analysis.load import FINISHED, column, is_imported
from repeatability.records.run_setup import SEED_SOURCES
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


UNKNOWN = "unknown (no adapters or seeds recorded)"


def recorded_seeds(rows: pd.DataFrame) -> bool:
    """Whether any of the runs recorded a seed of a training source (imported runs: never)."""
    return any(column(rows, getattr(S.seeds, s)).notna().any() for s in SEED_SOURCES)


def _verdict_text(n: int, adapters: int, same_greedy: int, n_prompts: int, spread: float,
                  seeds_varied: bool, seeds_recorded: bool = True) -> str:
    """One sentence; trials meant to differ (seeds vary) are not called "not repeatable", and
    trials with no evidence either way (no adapter hash, no seed) are called unknown."""
    if n < 2:
        return "fewer than 2 finished runs: nothing to compare"
    if adapters == 0 and not seeds_recorded:
        return UNKNOWN
    if adapters == 1:
        return "bitwise repeatable: every adapter is identical"
    if n_prompts and same_greedy == n_prompts:
        if not adapters:
            return "adapters not recorded; greedy outputs are identical"
        return f"weights differ ({adapters} distinct adapters) but greedy outputs are identical"
    found = f"{adapters} distinct adapters" if adapters else "adapters not recorded"
    spread_txt = f"perplexity max/min = {format_number(spread)}"
    if seeds_varied:
        return f"trials differ, as their seeds do: {found}, {spread_txt}"
    if adapters == 0:
        return f"unknown (no adapters recorded; identical seeds), {spread_txt}"
    return f"NOT repeatable under identical seeds: {adapters} distinct adapters, {spread_txt}"


def cell_verdicts(runs: pd.DataFrame, gens: pd.DataFrame,
                  metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per cell: finished runs, distinct adapter hashes, greedy identity, spread.

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
                    "verdict": _verdict_text(len(done), int(hashes.nunique()), same, n_prompts,
                                             spread, bool(set(varied) - {"generation"}),
                                             recorded_seeds(done))})
    return pd.DataFrame(out)


def _bitwise_parts(done: pd.DataFrame, curve: pd.Series | None,
                   greedy: tuple[int, int]) -> tuple[list[str], bool]:
    """The three checks of one cell in words, and whether all of them passed."""
    n, hashes = len(done), column(done, S.adapter.sha256).dropna()
    if len(hashes) == n and hashes.nunique() == 1:
        parts, ok = [f"adapters identical ({n}/{n} same SHA-256)"], True
    else:
        top = int(hashes.value_counts().max()) if len(hashes) else 0
        parts = [f"adapters differ ({hashes.nunique()} distinct SHA-256 in {len(hashes)} "
                 f"recorded of {n}; at most {top} alike)"]
        ok = False
    if curve is None or not curve["n_pairs"]:
        parts.append("no loss curves to compare")
    elif curve["n_pairs_identical"] == curve["n_pairs"]:
        parts.append("loss curves identical")
    else:
        parts.append(f"loss curves part at step {format_number(curve['first_step'])}")
        ok = False
    same, n_prompts = greedy
    if not n_prompts:
        parts.append("no greedy generations")
    elif same == n_prompts:
        parts.append("greedy generations identical")
    else:
        parts.append(f"greedy generations identical on {same}/{n_prompts} prompts")
        ok = False
    return parts, ok


def bitwise_verdicts(runs: pd.DataFrame, curves: pd.DataFrame, gens: pd.DataFrame,
                     parting: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell with ``bitwise`` (every adapter's SHA-256 equal, every training-loss
    curve identical at every step, every greedy completion identical; curves or generations
    not recorded count as passing) and ``line``, the verdict as one line of text.

    ``parting``: :func:`analysis.compute.curves.within_cell_parting` of ``curves`` (atol 0), when the
    caller has it.
    """
    within = (within_cell_parting(curves) if parting is None else parting).set_index("cell")
    rows = []
    for cell, group in runs.groupby("cell", sort=True):
        done = group[group["status"].isin(FINISHED)]
        if len(done) < 2:
            rows.append({"cell": cell, "bitwise": False,
                         "line": f"`{cell}`: {len(done)} finished run(s): nothing to compare"})
            continue
        if column(done, S.adapter.sha256).dropna().empty and not recorded_seeds(done):
            rows.append({"cell": cell, "bitwise": None, "line": f"`{cell}`: {UNKNOWN}"})
            continue
        curve = within.loc[cell] if cell in within.index else None
        parts, ok = _bitwise_parts(done, curve, _greedy_identity(gens, str(cell)))
        varied = varied_sources(done)
        if ok:
            end = "bitwise repeatable"
        elif set(varied) - {"generation"}:
            end = f"not bitwise repeatable, as designed (seeds vary: {', '.join(varied)})"
        else:
            end = "NOT bitwise repeatable under identical seeds"
        rows.append({"cell": cell, "bitwise": ok,
                     "line": f"`{cell}`: " + ", ".join(parts) + f" → {end}"})
    return pd.DataFrame(rows, columns=["cell", "bitwise", "line"])


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


def not_as_asked(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run that failed, diverged, is half-finished, unreadable or corrupted, and every run whose
    optimizer did not do what was requested (paging off on CPU, 8-bit state partial or absent).
    """
    out: list[dict[str, Any]] = []
    for _, row in runs.iterrows():
        out += [{"run": row["run"], "cell": row["cell"], "trial": row["trial"], "issue": issue,
                 "detail": detail} for issue, detail in _issues(row)]
    return pd.DataFrame(out, columns=["run", "cell", "trial", "issue", "detail"])


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
