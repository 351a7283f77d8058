"""Figures of the time to blow-up (:mod:`analysis.compute.survival`): the Kaplan–Meier curves per
arm, and update inflation per arm against the step. Same conventions as
:mod:`analysis.present.plots`: each function returns a Figure on its own Agg canvas, sized to be
read on a 1280 px page (10.5 in at the report's 110 dpi).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.present.plots import new_figure

SIZE = (10.5, 4.6)  # inches: 1155 x 506 px at 110 dpi


def _colors(labels: dict[str, str]) -> dict[str, str]:
    """One colour per arm, in the arms' order, the same in both figures."""
    return {arm: f"C{i}" for i, arm in enumerate(labels)}


def km_figure(km: pd.DataFrame, runs: pd.DataFrame, labels: dict[str, str], k: float,
              horizon: int, alpha: float) -> Figure:
    """One step curve per arm (the share of runs not yet blown up at k × base) with its pointwise
    band, a tick at each censored run's last step; x from 0 to ``horizon``
    (:func:`analysis.compute.survival.km_curves` and ``first_crossings``, rows at ``k``)."""
    fig, axes = new_figure(SIZE)
    ax, colors = axes[0, 0], _colors(labels)
    for i, (arm, label) in enumerate(labels.items()):
        curve = km[(km["arm"] == arm) & np.isclose(km["k"], k)].sort_values("step")
        mine = runs[(runs["arm"] == arm) & np.isclose(runs["k"], k)]
        if curve.empty:
            continue
        steps = np.r_[curve["step"].to_numpy(float), horizon]  # carry the last value to the horizon
        last = curve.iloc[-1]
        ax.fill_between(steps, np.r_[curve["band_low"], last["band_low"]],
                        np.r_[curve["band_high"], last["band_high"]], step="post", color=colors[arm],
                        alpha=0.15, lw=0)
        # each arm thinner than the one before, so arms whose curves coincide (none blew up) stay visible
        ax.step(steps, np.r_[curve["survival"], last["survival"]], where="post", color=colors[arm], lw=3.2 - 0.8 * i,
                label=f"{label} ({int(mine['event'].sum())}/{len(mine)} blew up)")
        censored = mine[~mine["event"].astype(bool)]["step"].astype(float)
        at = np.interp(censored, steps, np.r_[curve["survival"], last["survival"]])  # curve is flat there
        ax.plot(censored, at, ls="", marker="|", ms=12, mew=1.5, color=colors[arm])
    ax.set_xlim(0, horizon * 1.02)  # room for the censoring ticks at the horizon
    ax.set_ylim(-0.03, 1.06)
    ax.set_xlabel("optimizer step", fontsize=11)
    ax.set_ylabel(f"share of runs not yet blown up\n(validation loss ≤ ln({k:g} × base perplexity))", fontsize=11)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="0.6", alpha=0.3, label=f"pointwise {1 - alpha:.0%} band"),
                Line2D([], [], ls="", marker="|", ms=12, mew=1.5, color="0.3", label="censored (no blow-up by then)")]
    ax.legend(handles=handles, fontsize=9, loc="best")
    ax.tick_params(labelsize=10)
    return fig


def inflation_figure(bands: pd.DataFrame, labels: dict[str, str]) -> Figure:
    """Update inflation (applied update / exact fp32 AdamW's) against the optimizer step: per arm
    the median over trials, with the band from the 25th to the 75th percentile; log y when every
    value is positive (:func:`analysis.compute.survival.inflation_bands`)."""
    fig, axes = new_figure(SIZE)
    ax, colors = axes[0, 0], _colors(labels)
    for arm, label in labels.items():
        rows = bands[bands["arm"] == arm].sort_values("step")
        if rows.empty:
            continue
        ax.fill_between(rows["step"], rows["q25"], rows["q75"], color=colors[arm], alpha=0.2, lw=0)
        ax.plot(rows["step"], rows["median"], color=colors[arm], lw=1.6,
                label=f"{label} (n = {int(rows['n'].max())})")
    values = bands[["q25", "q75"]].to_numpy(float)
    values = values[np.isfinite(values)]
    log = bool(values.size) and bool((values > 0).all())
    ax.set_yscale("log" if log else "linear")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="exact fp32 AdamW (1)")
    ax.set_xlabel("optimizer step", fontsize=11)
    ax.set_ylabel("update inflation" + (" (log scale)" if log else ""), fontsize=11)
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=9, loc="upper left", title="median over trials, band 25th–75th percentile",
              title_fontsize=9)
    ax.tick_params(labelsize=10)
    return fig
