"""Figures of the learning-rate edge (:mod:`analysis.compute.lr_edge`): held-out perplexity against the
learning rate, and update inflation against the step. Same conventions as
:mod:`analysis.present.plots`: each function returns a Figure on its own Agg canvas.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from analysis.compute.lr_edge import EDGE_RATE
from analysis.present.formatting import format_lr
from analysis.present.plots import STATUS_MARKERS, new_figure

NONFINITE_MARKER = "^"  # a run without a finite perplexity, drawn at the top of the panel
TOP_FACTOR = 3.0  # how far above the highest value or line that top row is drawn


def _panels(n: int, width: float = 4.4, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    ncols = min(3, max(n, 1))
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = new_figure((width * ncols + 1.6, height * nrows), nrows, ncols,
                           sharex=True, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _ppl_panel(ax: Axes, runs: pd.DataFrame, rates: pd.DataFrame, edge: float, top: float) -> None:
    """One arm: a dot per finished run (spread a little by trial), the median per LR, the base
    and blow-up lines, the edge."""
    ppl = runs["perplexity"].astype(float)
    shown = np.isfinite(ppl) & (ppl > 0)
    x = runs["lr"] * 10 ** (0.03 * (runs["trial"] - runs["trial"].mean()))
    for status, marker in STATUS_MARKERS.items():
        sel = shown & (runs["status"] == status)
        ax.scatter(x[sel], ppl[sel], marker=marker, s=30, color="C0", zorder=3)
    ax.scatter(x[~shown], [top] * int((~shown).sum()), marker=NONFINITE_MARKER, s=36, color="C3",
               zorder=3)
    medians = rates[np.isfinite(rates["ppl_median"].astype(float))]
    ax.plot(medians["lr"], medians["ppl_median"], color="k", lw=1, zorder=2)
    ax.axhline(rates["base"].iloc[0], color="0.4", ls="--", lw=1)
    ax.axhline(rates["threshold"].iloc[0], color="C3", ls=":", lw=1.2)
    if math.isfinite(edge):
        ax.axvline(edge, color="C1", lw=1, alpha=0.8)


def _ppl_legend(ax: Axes, k: float) -> None:
    handles = [Line2D([], [], ls="", marker=m, color="C0", label=s) for s, m in STATUS_MARKERS.items()]
    handles += [Line2D([], [], ls="", marker=NONFINITE_MARKER, color="C3",
                       label="not finite (drawn at the top)"),
                Line2D([], [], color="k", lw=1, label="median per LR"),
                Line2D([], [], color="0.4", ls="--", lw=1, label="base model"),
                Line2D([], [], color="C3", ls=":", lw=1.2, label=f"blow-up: {k:g} × base"),
                Line2D([], [], color="C1", lw=1, label=f"edge (≥ {EDGE_RATE:.0%} blow-ups)")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def perplexity_vs_lr(outcomes: pd.DataFrame, rates: pd.DataFrame, edges: pd.DataFrame,
                     labels: dict[str, str], k: float) -> Figure:
    """One panel per arm (in the order of ``labels``): held-out perplexity (log) against the
    learning rate (log), every finished run a dot, from :class:`analysis.compute.lr_edge.EdgeResults`."""
    arms = list(labels)
    fig, axes = _panels(len(arms))
    ppl = outcomes["perplexity"].astype(float)
    highest = max([*ppl[np.isfinite(ppl)], *rates["threshold"].astype(float).dropna(), 1.0])
    edge = edges.set_index("arm")["edge"]
    for ax, arm in zip(axes.flat, arms):
        _ppl_panel(ax, outcomes[outcomes["arm"] == arm], rates[rates["arm"] == arm],
                   float(edge.get(arm, math.nan)), highest * TOP_FACTOR)
        ax.set_title(labels[arm], fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    lrs = sorted(rates["lr"].unique())
    axes.flat[0].set_xticks(lrs, [format_lr(v) for v in lrs])
    axes.flat[0].xaxis.set_minor_locator(NullLocator())
    _ppl_legend(axes.flat[min(len(arms), axes.shape[1]) - 1], k)
    fig.supxlabel("learning rate (log scale)", fontsize=10)
    fig.supylabel("held-out perplexity (log scale)", fontsize=10)
    return fig


def _inflation_panel(ax: Axes, rows: pd.DataFrame, colors: dict[float, tuple]) -> None:
    """One arm: per LR, the median over trials against the step over a min–max band."""
    for lr, group in rows.groupby("lr", sort=True):
        group = group.sort_values("step")
        color = colors[lr]
        ax.fill_between(group["step"], group["update_inflation_min"], group["update_inflation_max"],
                        color=color, alpha=0.2, lw=0)
        ax.plot(group["step"], group["update_inflation_median"], color=color, lw=1.2)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")


def inflation_vs_step(curves: pd.DataFrame, labels: dict[str, str]) -> Figure:
    """One panel per arm: update inflation (applied update / exact fp32 AdamW's) against the
    optimizer step, one line per LR (median over trials, band from min to max), from
    :func:`analysis.compute.lr_edge.inflation_curves`; log y when every value is positive."""
    arms = [a for a in labels if a in set(curves["arm"])]
    fig, axes = _panels(len(arms))
    lrs = sorted(curves["lr"].unique())
    colors = {lr: colormaps["viridis"](0.1 + 0.8 * i / max(len(lrs) - 1, 1))  # dark → light
              for i, lr in enumerate(lrs)}
    values = curves[["update_inflation_min", "update_inflation_max"]].astype(float).to_numpy()
    values = values[np.isfinite(values)]
    log = bool(values.size) and bool((values > 0).all())
    for ax, arm in zip(axes.flat, arms):
        _inflation_panel(ax, curves[curves["arm"] == arm], colors)
        ax.set_title(labels[arm], fontsize=9)
        ax.set_yscale("log" if log else "linear")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, lw=1.2, label=f"LR {format_lr(lr)}") for lr, c in colors.items()]
    handles.append(Line2D([], [], color="k", lw=0.8, ls="--", label="exact AdamW (1)"))
    axes.flat[max(min(len(arms), axes.shape[1]) - 1, 0)].legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
        title="median over trials,\nband min–max", title_fontsize=7)
    fig.supxlabel("optimizer step", fontsize=10)
    fig.supylabel("update inflation" + (" (log scale)" if log else ""), fontsize=10)
    return fig

