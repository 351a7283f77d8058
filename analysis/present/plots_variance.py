"""Figures of where the variance comes from (OFAT components, ANOVA shares) and of the adapter
distance by layer. Same conventions as :mod:`analysis.present.plots`: each function returns a
Figure on its own Agg canvas and leaves saving to the caller.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.compute.variance import BASELINE, WEIGHTS
from analysis.present.plots import new_figure
from repeatability.config.run import SEED_SOURCES

SHARE_METRICS = ("log perplexity", "final val loss", "final train loss", WEIGHTS)
FLOOR_COLOR = "0.55"


def _ordered(sources: list[str]) -> list[str]:
    """The floor first, then the seed sources in their usual order, then anything else."""
    rank = {BASELINE: -1} | {s: i for i, s in enumerate(SEED_SOURCES)}
    return sorted(dict.fromkeys(sources), key=lambda s: (rank.get(s, len(rank)), s))


def _source_colors(sources: list[str]) -> dict[str, str]:
    varied = [s for s in _ordered(sources) if s != BASELINE]
    return {BASELINE: FLOOR_COLOR} | {s: f"C{i % 10}" for i, s in enumerate(varied)}


def _std_panel(ax: Axes, rows: pd.DataFrame, colors: dict[str, str]) -> None:
    """Bars = std of log perplexity per source (value on top), whiskers = bootstrap 95% CI,
    the floor dashed."""
    rows = rows.set_index("source").loc[_ordered(list(rows["source"]))].reset_index()
    x = np.arange(len(rows))
    low = (rows["std"] - rows["std_ci_low"]).clip(lower=0).fillna(0)
    high = (rows["std_ci_high"] - rows["std"]).clip(lower=0).fillna(0)
    bars = ax.bar(x, rows["std"].fillna(0), color=[colors[s] for s in rows["source"]],
                  yerr=[low.to_numpy(), high.to_numpy()], capsize=4, ecolor="k", width=0.6)
    ax.bar_label(bars, [f"{v:.3g}" for v in rows["std"]], padding=2, fontsize=8,
                 label_type="edge", position=(14, 0))
    floor = rows[rows["source"] == BASELINE]
    if len(floor) and floor["std"].notna().all():
        ax.axhline(float(floor["std"].iloc[0]), color="k", ls="--", lw=1,
                   label="floor: every seed fixed")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xticks(x, [f"{s}\nn = {n}" for s, n in zip(rows["source"], rows["n"])], fontsize=8)
    ax.set_xlabel("seed source varied across trials (all others fixed)")
    ax.set_ylabel("std of log perplexity across trials\n(≈ relative spread of perplexity)")
    ax.set_ylim(0, max(float((rows["std_ci_high"].fillna(0)).max()),
                       float(rows["std"].fillna(0).max()), 1e-12) * 1.25)
    ax.grid(axis="y", alpha=0.3)


def _share_panel(ax: Axes, rows: pd.DataFrame, colors: dict[str, str]) -> None:
    """One horizontal bar per metric, split into each source's share (in % where ≥ 8%)."""
    metrics = [m for m in SHARE_METRICS if m in set(rows["metric"])]
    for i, metric in enumerate(metrics):
        left = 0.0
        part = rows[rows["metric"] == metric]
        for source, color in colors.items():
            share = part.loc[part["source"] == source, "share"]
            if len(share) and share.notna().all() and float(share.iloc[0]) > 0:
                width = float(share.iloc[0])
                ax.barh(i, width, left=left, color=color, height=0.6)
                if width >= 0.08:
                    ax.text(left + width / 2, i, f"{width:.0%}", ha="center", va="center",
                            fontsize=8, color="white")
                left += width
        if left == 0:
            ax.text(0.02, i, "no variance", va="center", fontsize=8)
    ax.set_yticks(range(len(metrics)), metrics, fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of the variance (component / sum of components)")
    handles = [Patch(color=c, label=s) for s, c in colors.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="seed source", title_fontsize=7)
    ax.grid(axis="x", alpha=0.3)


def variance_sources(table: pd.DataFrame) -> Figure:
    """Per OFAT group (a row of panels): left, each source's std of log perplexity with its
    bootstrap 95% CI and the floor; right, each source's share of the variance of log
    perplexity, final losses and the adapter update ΔW."""
    groups = sorted(table["group"].unique()) or ["(no one-factor-at-a-time cells)"]
    fig, axes = new_figure((12.5, 3.9 * len(groups)), len(groups), 2)
    for row, group in zip(axes, groups):
        part = table[table["group"] == group]
        log_rows = part[part["metric"] == "log perplexity"]
        colors = _source_colors(list(log_rows["source"]) or list(part["source"].unique()))
        _std_panel(row[0], log_rows, colors)
        row[0].set_title(f"{group}: trial-to-trial spread by seed source", fontsize=9)
        _share_panel(row[1], part, colors)
        row[1].set_title("each source's share of the variance", fontsize=9)
    return fig


def anova_shares(results: list[tuple[str, str, pd.DataFrame]]) -> Figure:
    """One horizontal bar per (design, response): each ANOVA term's η² (share of the total
    sum of squares), residual in grey."""
    fig, axes = new_figure((10, 1.4 + 0.6 * max(len(results), 1)))
    ax = axes[0, 0]
    terms = [t for _, _, tab in results for t in tab["term"] if t not in ("total", "residual")]
    colors = {t: f"C{i % 10}" for i, t in enumerate(dict.fromkeys(terms))} | {
        "residual": FLOOR_COLOR}
    labels = []
    for i, (design, response, tab) in enumerate(results):
        left = 0.0
        for term, share in zip(tab["term"], tab["eta2"]):
            if term != "total" and np.isfinite(share) and share > 0:
                ax.barh(i, share, left=left, color=colors[term], height=0.6)
                if share >= 0.08:
                    ax.text(left + share / 2, i, f"{share:.0%}", ha="center", va="center",
                            fontsize=8, color="white")
                left += share
        labels.append(f"{design}\n{response}")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("η² = sum of squares / total sum of squares (type-2 ANOVA)")
    handles = [Patch(color=c, label=t) for t, c in colors.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Crossed design: share of the variance by term", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _legend_names(cells: list[str]) -> dict[str, str]:
    """Cell names without the model/dataset parts when every cell shares them."""
    heads = {tuple(c.split("__")[:2]) for c in cells}
    if len(heads) == 1:
        return {c: " / ".join(c.split("__")[2:]) for c in cells}
    return {c: c.replace("__", " / ") for c in cells}


def adapter_distance_by_layer(layers: pd.DataFrame) -> Figure:
    """Relative L2 distance of ΔW between trials per transformer layer: one line per cell
    (mean over trial pairs), band = min–max over pairs."""
    fig, axes = new_figure((9.5, 3.8))
    ax = axes[0, 0]
    rows_by_cell = layers[layers["layer"] >= 0].groupby("cell", sort=True)
    names = _legend_names([str(c) for c, _ in rows_by_cell])
    for i, (cell, rows) in enumerate(rows_by_cell):
        rows = rows.sort_values("layer")
        ax.fill_between(rows["layer"], rows["rel_l2_min"], rows["rel_l2_max"], alpha=0.15,
                        color=f"C{i % 10}", lw=0)
        ax.plot(rows["layer"], rows["rel_l2_mean"], marker="o", ms=3, lw=1.2,
                color=f"C{i % 10}", label=names[str(cell)])
    top = float(layers["rel_l2_max"].max()) if len(layers) else 0.0
    if top > 0.5:  # the scale of unrelated updates, for reading the lines
        ax.axhline(np.sqrt(2), color="0.4", ls=":", lw=1, label="√2: orthogonal, equal norms")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("transformer layer")
    ax.set_ylabel("relative L2 distance of ΔW = s·B·A\nbetween trials (mean over pairs)")
    ax.set_ylim(0, max(top, np.sqrt(2) if top > 0.5 else 0.0, 1e-12) * 1.12)
    ax.set_title("How far apart the trials' adapter updates are, by layer (band: min–max "
                 "over pairs)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="cell",
                  title_fontsize=7)
    return fig
