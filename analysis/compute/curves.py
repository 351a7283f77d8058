"""Loss curves across trials: dispersion per step, and where runs first part ways.

Three things were once all called "divergence"; each has its own word now: curves *part*
(here: the first logged step where two runs' losses differ by more than ``atol``); a run
*blows up* (``status == "diverged"``, step in the summary's ``divergence.step``:
:mod:`analysis.compute.blowups`); adapters lie a *distance* apart (:mod:`analysis.compute.adapter_distance`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from analysis.compute.stats import stats_table
from analysis.load import FINISHED, Study
from repeatability.records import metrics as registry

LOSS_METRICS = registry.keys("loss")
LOSS_ATOL = 0.01  # nats/token: a difference in loss curves worth calling material


def _finished(curves: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = curves[(curves["split"] == split) & curves["status"].isin(FINISHED)]
    return rows.astype({"loss": float, "step": int})


SMOOTH_SPAN = 20  # the training-loss EMA's span in logged steps: weight α = 2 / (span + 1) ≈ 0.095


def smoothed(curves: pd.DataFrame, split: str = "train", span: int = SMOOTH_SPAN) -> pd.DataFrame:
    """Finished runs' curves of ``split`` with ``smooth``: per (cell, trial), the exponential
    moving average of the loss over logged steps (pandas ``ewm(span=span, adjust=True)``, i.e.
    bias-corrected at the start, like TensorBoard's smoothing; NaN losses are skipped)."""
    rows = _finished(curves, split).sort_values(["cell", "trial", "step"])
    rows["smooth"] = rows.groupby(["cell", "trial"])["loss"].transform(
        lambda x: x.ewm(span=span, adjust=True, ignore_na=True).mean())
    return rows


def arm_bands(smooth: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, step) of :func:`smoothed`: trials, median, min and max of the smoothed loss."""
    if smooth.empty:
        return pd.DataFrame(columns=["cell", "step", "n", "median", "min", "max"])
    out = smooth.groupby(["cell", "step"])["smooth"].agg(["count", "median", "min", "max"])
    return out.rename(columns={"count": "n"}).reset_index()


def dispersion(curves: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """Per (cell, step): number of trials, mean, std (n-1), min, max and range of the loss.

    Only finished runs count; a step logged by fewer trials shows a smaller ``n``.
    """
    rows = _finished(curves, split)
    if rows.empty:
        return pd.DataFrame(columns=["cell", "step", "n", "mean", "std", "min", "max", "range"])
    out = rows.groupby(["cell", "step"])["loss"].agg(["count", "mean", "std", "min", "max"])
    out = out.rename(columns={"count": "n"}).reset_index()
    out["range"] = out["max"] - out["min"]
    return out


def first_parting_step(a: pd.DataFrame, b: pd.DataFrame, atol: float = 0.0) -> float:
    """First step both curves logged where ``|loss_a - loss_b| > atol`` (NaN ≠ anything).

    ``a`` and ``b`` are one run's rows each (``step``, ``loss``). NaN when they never part on
    their common steps (including when they share no step).
    """
    merged = pd.merge(a[["step", "loss"]], b[["step", "loss"]], on="step", suffixes=("_a", "_b"))
    merged = merged.sort_values("step")
    la, lb = merged["loss_a"].to_numpy(float), merged["loss_b"].to_numpy(float)
    both_nan = np.isnan(la) & np.isnan(lb)
    differ = ~both_nan & ~(np.abs(la - lb) <= atol)
    hits = merged["step"].to_numpy()[differ]
    return float(hits[0]) if hits.size else math.nan


def _runs_of(rows: pd.DataFrame) -> dict[int, pd.DataFrame]:
    return {int(t): g for t, g in rows.groupby("trial")}


def within_cell_parting(curves: pd.DataFrame, split: str = "train",
                           atol: float = 0.0) -> pd.DataFrame:
    """Per cell: the earliest step at which any two of its trials part, and when all pairs do.

    ``first_step``: min over trial pairs of :func:`first_parting_step` (NaN: all trials
    identical); ``n_pairs_identical``: pairs that never part; ``last_common_step``.
    """
    out = []
    for cell, rows in _finished(curves, split).groupby("cell"):
        runs = _runs_of(rows)
        steps = [first_parting_step(runs[i], runs[j], atol) for i, j in combinations(runs, 2)]
        parted = [s for s in steps if not math.isnan(s)]
        out.append({"cell": cell, "n_trials": len(runs), "n_pairs": len(steps),
                    "n_pairs_identical": len(steps) - len(parted),
                    "first_step": min(parted) if parted else math.nan,
                    "last_common_step": float(rows["step"].max())})
    return pd.DataFrame(out, columns=["cell", "n_trials", "n_pairs", "n_pairs_identical",
                                      "first_step", "last_common_step"])


def paired_parting(curves: pd.DataFrame, cell_x: str, cell_y: str, split: str = "train",
                      atol: float = 0.0) -> pd.DataFrame:
    """Per trial in both cells: first step where arm X's curve parts from arm Y's.

    Meaningful when the arms are seed-matched (see :func:`analysis.compute.stats.paired_trials`):
    then the step shows when the optimizer difference first changes the loss.
    """
    rows = _finished(curves, split)
    x, y = _runs_of(rows[rows["cell"] == cell_x]), _runs_of(rows[rows["cell"] == cell_y])
    out = [{"trial": t, "x": cell_x, "y": cell_y,
            "first_step": first_parting_step(x[t], y[t], atol),
            "final_loss_x": float(x[t].sort_values("step")["loss"].iloc[-1]),
            "final_loss_y": float(y[t].sort_values("step")["loss"].iloc[-1])}
           for t in sorted(set(x) & set(y))]
    return pd.DataFrame(out, columns=["trial", "x", "y", "first_step", "final_loss_x",
                                      "final_loss_y"])


@dataclass(frozen=True)
class Parting:
    """Where arm X's loss curve parts from arm Y's, per trial (``first_step`` at atol 0,
    ``first_step_tol`` beyond :data:`LOSS_ATOL`); ``seed_matched``: the arms share seeds."""

    x: str
    y: str
    seed_matched: bool
    table: pd.DataFrame


@dataclass(frozen=True)
class LossResults:
    """The loss-curve section's numbers (:func:`loss_results`).

    Attributes:
        final_stats: :func:`analysis.compute.stats.stats_table` of the final losses (:data:`LOSS_METRICS`).
        parting: where the trials of a cell part (:func:`within_cell_parting` at atol 0, plus
            ``first_step_tol`` at :data:`LOSS_ATOL`).
        parting_pairs: where the arms of each comparison part.
        dispersion: :func:`dispersion` of the training loss.
        smoothed: :func:`smoothed` training loss of the finished runs; bands: its :func:`arm_bands`.
    """

    final_stats: pd.DataFrame
    parting: pd.DataFrame
    parting_pairs: tuple[Parting, ...]
    dispersion: pd.DataFrame
    smoothed: pd.DataFrame
    bands: pd.DataFrame


def loss_results(study: Study, matched: Mapping[tuple[str, str], list[int]]) -> LossResults:
    """Final-loss statistics, dispersion, and where curves part, at atol 0 and :data:`LOSS_ATOL`
    (``first_step`` = any difference, ``first_step_tol`` = beyond it); ``matched``: the seed-matched
    trials of each pair of arms (:attr:`analysis.compute.results.Results.seed_matched`)."""
    tol = within_cell_parting(study.curves, atol=LOSS_ATOL).set_index("cell")["first_step"]
    parting = within_cell_parting(study.curves)
    parting.insert(5, "first_step_tol", parting["cell"].map(tol))
    pairs = []
    for (x, y), trials in matched.items():
        paired = paired_parting(study.curves, x, y)
        paired.insert(4, "first_step_tol", paired_parting(study.curves, x, y, atol=LOSS_ATOL)["first_step"].to_numpy())
        pairs.append(Parting(x, y, bool(trials), paired))
    smooth = smoothed(study.curves, "train") if len(study.curves) else study.curves.iloc[:0]
    return LossResults(final_stats=stats_table(study.runs, LOSS_METRICS), parting=parting,
                       parting_pairs=tuple(pairs), dispersion=dispersion(study.curves),
                       smoothed=smooth, bands=arm_bands(smooth))
