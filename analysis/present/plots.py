"""Figures (matplotlib, Agg canvas). Every function returns a Figure and leaves saving to
the caller; the y axis turns logarithmic when the plotted values span more than 10×.

Figures are built without pyplot: each gets its own Agg canvas, so nothing depends on (or
changes) the process's backend, no figure lingers in pyplot's registry, and a notebook still
shows the returned Figure inline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.compute.stats import PRIMARY_METRIC, paired_trials
from analysis.load import FINISHED, column, optim_bits
from repeatability.records import metrics as registry

STATUS_MARKERS = {"complete": "o", "diverged": "X"}
LOG_SPAN = 10.0  # values spanning more than this ratio get a log axis


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1,
               **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure on an Agg canvas and its axes as a 2-D array."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)


def metric_label(metric: str) -> str:
    """Axis/caption text for a summary key (with its definition and unit), else the key."""
    return registry.label(metric)


def wants_log(values: Iterable[float]) -> bool:
    """True when the finite positive values span more than :data:`LOG_SPAN` (max/min)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return bool(x.size and (x > 0).all() and x.max() / x.min() > LOG_SPAN)


def short_cell(cell: str) -> str:
    """A cell name broken over lines at ``__`` so tick labels stay readable."""
    return cell.replace("__", "\n")


def _n_nonfinite(runs: pd.DataFrame, cell: str, metric: str) -> int:
    """Finished runs of ``cell`` whose ``metric`` is NaN/inf (a diverged run, typically)."""
    rows = runs[(runs["cell"] == cell) & runs["status"].isin(FINISHED)]
    values = pd.to_numeric(column(rows, metric), errors="coerce").astype(float)
    return int((~np.isfinite(values)).sum())


def _values(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = runs[runs["status"].isin(FINISHED)].copy()
    rows["value"] = pd.to_numeric(column(rows, metric), errors="coerce").astype(float)
    return rows[np.isfinite(rows["value"])]


def _same_comparison(runs: pd.DataFrame, left: str, right: str) -> bool:
    """Two cells differing only in the optimizer, with seed-matched trials."""
    keys = ["model", "dataset", "variant"]
    a = runs.loc[runs["cell"] == left, keys].iloc[0]
    b = runs.loc[runs["cell"] == right, keys].iloc[0]
    return bool((a == b).all()) and bool(paired_trials(runs, left, right))


def cell_order(runs: pd.DataFrame) -> list[str]:
    """Cells grouped by model, dataset and variant; within a group, fewer optimizer bits first."""
    frame = runs.assign(bits=optim_bits(runs).fillna(np.inf)).groupby("cell").agg(
        model=("model", "first"), dataset=("dataset", "first"), variant=("variant", "first"),
        bits=("bits", "min"))
    return list(frame.sort_values(["model", "dataset", "variant", "bits"]).index)


def _status_legend(ax: Axes, statuses: Iterable[str], joined: bool) -> None:
    handles = [Line2D([], [], ls="", marker=STATUS_MARKERS[s], color="0.35", label=s)
               for s in STATUS_MARKERS if s in set(statuses)]
    handles.append(Line2D([], [], color="k", lw=1.5, label="median"))
    if joined:
        handles.append(Line2D([], [], color="0.75", lw=0.8, label="same trial & seeds"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def metric_by_cell(runs: pd.DataFrame, metric: str = PRIMARY_METRIC,
                   cells: list[str] | None = None, labels: dict[str, str] | None = None) -> Figure:
    """One column of points per cell (one point per trial, ``X`` = diverged), median as a bar;
    cells in :func:`cell_order` unless given; tick labels from ``labels`` (cell → short label,
    :func:`analysis.present.labels.short_labels`) when given, else the cell names broken at ``__``.

    Neighbouring cells that differ only in the optimizer and are seed-matched get each trial's
    two points joined by a grey line (the paired view).
    """
    rows = _values(runs, metric)
    cells = cells or cell_order(runs)
    fig, axes = new_figure((max(6.5, 2.0 * len(cells) + 2.0), 4.4))
    ax = axes[0, 0]
    # x of each point: the cell's position, spread a little by trial so equal values stay visible
    rows = rows.assign(x=rows["cell"].map({c: i for i, c in enumerate(cells)})
                       + (rows["trial"] - rows["trial"].mean()) * 0.02)
    for i, cell in enumerate(cells):
        group = rows[rows["cell"] == cell]
        for status, marker in STATUS_MARKERS.items():
            sel = group[group["status"] == status]
            ax.scatter(sel["x"], sel["value"], marker=marker, s=36, color=f"C{i % 10}", zorder=3)
        if len(group):
            ax.hlines(group["value"].median(), i - 0.25, i + 0.25, color="k", lw=1.5, zorder=4)
    joined = 0
    for left, right in pairwise(cells):
        if _same_comparison(runs, left, right):
            pairs = pd.merge(rows[rows["cell"] == left], rows[rows["cell"] == right], on="trial")
            for _, pair in pairs.iterrows():
                ax.plot([pair["x_x"], pair["x_y"]], [pair["value_x"], pair["value_y"]],
                        color="0.75", lw=0.8, zorder=1)
                joined += 1
    log = wants_log(rows["value"])
    hidden = [_n_nonfinite(runs, c, metric) for c in cells]
    names = {c: labels[c].replace(" · ", "\n") if labels and c in labels else short_cell(c) for c in cells}
    ax.set_xticks(range(len(cells)), [names[c] + (f"\n+{n} not finite, not shown" if n else "")
                                      for c, n in zip(cells, hidden)], fontsize=8)
    ax.set_xlim(-0.6, len(cells) - 0.4)
    ax.set_ylabel(metric_label(metric) + (" (log scale)" if log else ""))
    ax.set_yscale("log" if log else "linear")
    ax.set_title(f"{metric_label(metric)}, one point per trial", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _status_legend(ax, rows["status"], joined > 0)
    return fig


def loss_curves(curves: pd.DataFrame, split: str = "train",
                cells: list[str] | None = None, smooth: pd.DataFrame | None = None,
                labels: dict[str, str] | None = None) -> Figure:
    """One panel per cell (shared axes): one line per trial of its finished runs, over a grey
    band from the lowest to the highest loss of any trial at each step. With ``smooth``
    (:func:`analysis.compute.curves.smoothed` of the same split) each trial's raw points are drawn faint
    and its smoothed curve on top.

    ``cells`` orders the panels (e.g. :func:`cell_order` of the runs); default: by name;
    ``labels`` titles them (cell → short label).
    """
    rows = curves[(curves["split"] == split) & curves["status"].isin(FINISHED)]
    present = set(rows["cell"])
    cells = [c for c in (cells or sorted(present)) if c in present] or ["(no finished runs)"]
    ncols = min(2, len(cells))
    nrows = math.ceil(len(cells) / ncols)
    fig, axes = new_figure((6 * ncols, 3.4 * nrows), nrows, ncols, sharex=True, sharey=True)
    log = wants_log(rows["loss"].astype(float))
    for ax, cell in zip(axes.flat, cells):
        band = rows[rows["cell"] == cell].astype({"loss": float}).groupby("step")["loss"]
        if band.ngroups and smooth is None:
            low, high = band.min(), band.max()
            ax.fill_between(low.index, low.to_numpy(), high.to_numpy(), color="0.6", alpha=0.25,
                            lw=0, label="min–max across trials")
        for i, (trial, run) in enumerate(rows[rows["cell"] == cell].groupby("trial")):
            run = run.sort_values("step")
            tag = f"trial {trial}" + (" (diverged)" if (run["status"] == "diverged").any() else "")
            if smooth is not None:
                ax.plot(run["step"], run["loss"].astype(float), lw=0.5, alpha=0.2, color=f"C{i % 10}")
                mine = smooth[(smooth["cell"] == cell) & (smooth["trial"] == trial)]
                ax.plot(mine["step"], mine["smooth"], lw=1.3, color=f"C{i % 10}", label=tag)
                continue
            ax.plot(run["step"], run["loss"].astype(float), lw=1, ms=3,
                    marker="o" if len(run) <= 20 else None,  # sparse (val) points stay visible
                    label=tag)
        ax.set_title(labels.get(cell, cell) if labels else cell, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_yscale("log" if log else "linear")
        if ax.get_lines():
            ax.legend(fontsize=7, ncols=2)
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    fig.supxlabel("optimizer step")
    fig.supylabel(f"{split} loss (nats/token)" + (" (log scale)" if log else ""))
    return fig


def loss_by_arm(bands: pd.DataFrame, cells: list[str], labels: dict[str, str]) -> Figure:
    """One axis, one colour per cell: the median over trials of the smoothed training loss, and
    the band from its lowest to its highest trial (:func:`analysis.compute.curves.arm_bands`)."""
    fig, axes = new_figure((7.5, 4.0))
    ax = axes[0, 0]
    shown = [c for c in cells if c in set(bands["cell"])]
    colour = (lambda i: f"C{i}") if len(shown) <= 10 else (lambda i: matplotlib.colormaps["tab20"](i % 20))
    for i, cell in enumerate(shown):
        rows = bands[bands["cell"] == cell].sort_values("step")
        ax.fill_between(rows["step"], rows["min"], rows["max"], color=colour(i), alpha=0.18, lw=0)
        ax.plot(rows["step"], rows["median"], color=colour(i), lw=1.5,
                label=f"{labels.get(cell, cell)} (n = {int(rows['n'].max())})")
    log = wants_log(pd.concat([bands["min"], bands["max"]]).astype(float))
    ax.set_yscale("log" if log else "linear")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("smoothed train loss (nats/token)" + (" (log scale)" if log else ""))
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def dispersion_figure(disp: pd.DataFrame, split: str = "train") -> Figure:
    """Across-trial standard deviation of the loss at each step, one line per cell, from
    :func:`analysis.compute.curves.dispersion`'s table of that split."""
    fig, axes = new_figure((6.5, 3.8))
    ax = axes[0, 0]
    for cell, group in disp.groupby("cell"):
        zero = not (group["std"].fillna(0) > 0).any()
        ax.plot(group["step"], group["std"], lw=1.2,
                label=cell + (" (std 0 at every step: not visible on a log axis)" if zero else ""))
    values = disp["std"][disp["std"] > 0] if len(disp) else []
    log = wants_log(values)
    if log:
        ax.set_yscale("log")
    else:  # a std is >= 0; an explicit range also keeps matplotlib from an offset axis
        top = float(disp["std"].max()) if len(disp) else 0.0
        ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        if len(disp) and top == 0:
            ax.text(0.5, 0.5, "every trial has the same loss at every step",
                    transform=ax.transAxes, ha="center")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"std of {split} loss across trials (nats/token)" + (", log" if log else ""))
    ax.set_title(f"Spread of the {split} loss between trials", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7)
    return fig


def paired_differences(runs: pd.DataFrame, cell_x: str, cell_y: str,
                       metric: str = PRIMARY_METRIC) -> Figure:
    """Per trial, arm X's ``metric`` relative to arm Y's, one bar per trial.

    Ratios spanning more than 10× (the paper's 8-bit runs) are drawn as X/Y on a log axis;
    otherwise as the relative difference X/Y − 1 in percent, so small effects stay visible.
    """
    rows = _values(runs, metric)
    table = rows.pivot_table(index="trial", columns="cell", values="value", aggfunc="first")
    fig, axes = new_figure((6, 3.6))
    ax = axes[0, 0]
    name = metric_label(metric).split(" (")[0]
    ratio = (table[cell_x] / table[cell_y]).dropna() if cell_x in table and cell_y in table \
        else pd.Series(dtype=float)
    if wants_log(list(ratio) + [1.0]):
        ax.bar(ratio.index.astype(str), ratio.to_numpy(), color="C0")
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=1)
        ax.set_ylabel(f"X / Y of {name} (log scale)")
    else:
        ax.bar(ratio.index.astype(str), (ratio.to_numpy() - 1) * 100, color="C0")
        ax.axhline(0.0, color="k", lw=1)
        ax.set_ylabel(f"X / Y − 1 of {name} (%)")
    matched = bool(paired_trials(runs, cell_x, cell_y))
    ax.set_xlabel("trial" + (" (same seeds in both arms)" if matched else " (seeds differ)"))
    ax.set_title(f"X = {cell_x}\nY = {cell_y}", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig
