"""Same seeds, another run of the study: repeatability beside reproducibility.

Repeatability is the spread between identical trials of one study (the seeds vary by trial);
reproducibility is what changes when *the same trial, with the same seeds*, runs again
elsewhere — another CPU, another locked environment. :func:`trial_pairs` pairs the runs of two
studies that share a cell, a trial and every seed, and measures per trial the relative
perplexity difference, whether the adapters are bitwise equal (recorded SHA-256) and the first
logged step where the training-loss curves part; :func:`cell_summary` puts each cell's largest
difference beside the study's own seed spread and arm effect.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.compute.curves import first_parting_step
from analysis.compute.stats import PRIMARY_METRIC
from analysis.load import FINISHED, Study, column
from repeatability.config.run import TRAINING_SEED_SOURCES
from repeatability.records.summary import COLUMNS as S

PAIR_COLUMNS = ("other", "cell", "trial", "perplexity", "perplexity_other", "rel_diff", "adapter_equal",
                "curves_part_step", "curves_max_abs_diff")
MACHINE_COLUMNS = ("study", "runs", "cpu", "torch_threads", "lock_sha256", "commits", "dirty_runs")
CELL_COLUMNS = ("other", "cell", "n_pairs", "max_abs_rel_diff", "median_abs_rel_diff", "adapters_equal",
                "first_part_step", "seed_spread", "arm_effect")


def _finished(study: Study, cell: str) -> pd.DataFrame:
    runs = study.runs
    return runs[(runs["cell"] == cell) & runs["status"].isin(FINISHED)].set_index("trial")


def _seeds(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({s: column(rows, getattr(S.seeds, s)) for s in TRAINING_SEED_SOURCES}, index=rows.index)


def _curve(study: Study, cell: str, trial: int) -> pd.DataFrame:
    c = study.curves
    return c[(c["cell"] == cell) & (c["trial"] == trial) & (c["split"] == "train")].astype({"loss": float})


def _max_abs_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    merged = pd.merge(a[["step", "loss"]], b[["step", "loss"]], on="step")
    return float(np.nanmax(np.abs(merged["loss_x"] - merged["loss_y"]))) if len(merged) else math.nan


def trial_pairs(study: Study, other: Study, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per (cell, trial) that both studies finished with the same recorded seeds
    (``lora_init``, ``data_order``, ``dropout``): perplexities, ``rel_diff`` = other / ours − 1,
    ``adapter_equal`` (both SHA-256 recorded and equal; NaN when one is missing),
    ``curves_part_step`` (first logged training step whose losses differ at all; NaN: never) and
    the largest absolute loss difference over common steps."""
    rows = []
    for cell in sorted(set(study.runs["cell"]) & set(other.runs["cell"])):
        ours, theirs = _finished(study, cell), _finished(other, cell)
        seeds_a, seeds_b = _seeds(ours), _seeds(theirs)
        for trial in sorted(set(ours.index) & set(theirs.index)):
            a, b = seeds_a.loc[trial], seeds_b.loc[trial]
            if a.isna().any() or not (a == b).all():
                continue  # not the same trial: seeds unrecorded or different
            ppl = float(pd.to_numeric(column(ours, metric), errors="coerce").loc[trial])
            ppl_other = float(pd.to_numeric(column(theirs, metric), errors="coerce").loc[trial])
            sha, sha_other = column(ours, S.adapter.sha256).loc[trial], column(theirs, S.adapter.sha256).loc[trial]
            ca, cb = _curve(study, cell, trial), _curve(other, cell, trial)
            rows.append({"other": other.name, "cell": cell, "trial": int(trial), "perplexity": ppl,
                         "perplexity_other": ppl_other, "rel_diff": ppl_other / ppl - 1,
                         "adapter_equal": (sha == sha_other) if pd.notna(sha) and pd.notna(sha_other)
                         else math.nan,
                         "curves_part_step": first_parting_step(ca, cb) if len(ca) and len(cb) else math.nan,
                         "curves_max_abs_diff": _max_abs_diff(ca, cb)})
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def cell_summary(pairs: pd.DataFrame, spread: pd.Series, effect: pd.Series) -> pd.DataFrame:
    """Per (other, cell) of :func:`trial_pairs`: pairs, the largest and median |relative
    perplexity difference|, adapters bitwise equal (count), the earliest step where curves part,
    beside this study's seed spread (max/min − 1 of the cell's perplexity; ``spread``: cell →
    max/min) and arm effect (``effect``: cell → |geometric-mean ratio − 1| of its comparison)."""
    rows = []
    for (other, cell), group in pairs.groupby(["other", "cell"], sort=True):
        rel = group["rel_diff"].abs()
        equal = group["adapter_equal"].dropna()
        rows.append({"other": other, "cell": cell, "n_pairs": len(group), "max_abs_rel_diff": rel.max(),
                     "median_abs_rel_diff": rel.median(),
                     "adapters_equal": f"{int(equal.astype(bool).sum())}/{len(equal)}",
                     "first_part_step": group["curves_part_step"].min(),
                     "seed_spread": spread.get(cell, math.nan) - 1, "arm_effect": effect.get(cell, math.nan)})
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


def _distinct(values: pd.Series, width: int | None = None) -> str:
    """The distinct recorded values, comma-separated (shortened to ``width``), or ``–``."""
    seen = [str(v)[:width] if width else str(v) for v in pd.unique(values.dropna())]
    return ", ".join(sorted(seen)) if seen else "–"


def machines(studies: list[Study]) -> pd.DataFrame:
    """Per study, where its finished runs ran: CPU (or GPU) model, torch threads, the lock's SHA-256
    (first 12), the project commits (first 9) and how many runs started on a dirty tree."""
    rows = []
    for study in studies:
        runs = study.runs[study.runs["status"].isin(FINISHED)]
        dirty = column(runs, "environment.git.dirty")
        rows.append({"study": study.name, "runs": len(runs), "cpu": _distinct(column(runs, S.device.name)),
                     "torch_threads": _distinct(column(runs, S.determinism.torch_num_threads)),
                     "lock_sha256": _distinct(column(runs, S.lock.sha256), 12),
                     "commits": _distinct(column(runs, "environment.git.commit"), 9),
                     "dirty_runs": int(dirty.fillna(False).astype(bool).sum())})
    return pd.DataFrame(rows, columns=list(MACHINE_COLUMNS))
