"""Paper-shaped tables (Tables 1/2: perplexity per trial; 3: memory; 10/11: times), as numbers;
:mod:`analysis.present.formatting` writes them (CSV at full precision, Markdown and LaTeX formatted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from analysis.compute.stats import PRIMARY_METRIC, stats_table
from analysis.load import FINISHED, column, optim_bits
from repeatability.records.summary import COLUMNS as S

# Which memory figure a table can show, best first: the paper's Table 3 is GPU allocation (%).
MEMORY_KEYS = ((S.memory.max_allocated_pct, "GPU memory allocated (% of device)"),
               (S.memory.max_allocated_mb, "GPU memory allocated (MB)"),
               (S.memory.peak_rss_mb, "CPU peak RSS during the run (MB)"))
TIME_METRICS = (S.timings.train_s, S.timings.eval_s, S.timings.total_s)


def arm_label(row: pd.Series | dict) -> str:
    """Column label of one arm: the optimizer name, plus the variant when there is one."""
    return f"{row['optim']}/{row['variant']}" if row.get("variant") else str(row["optim"])


def _with_arm(runs: pd.DataFrame) -> pd.DataFrame:
    frame = runs.copy()
    frame["arm"] = [arm_label(r) for _, r in frame.iterrows()]
    return frame


def arm_order(runs: pd.DataFrame) -> list[str]:
    """Arm labels, lower requested ``optim_bits`` first (8-bit before 32-bit, as the paper)."""
    frame = _with_arm(runs).assign(bits=optim_bits(runs).fillna(math.inf))
    bits = frame.groupby("arm")["bits"].min()
    return sorted(bits.index, key=lambda arm: (bits[arm], arm))


def _order_columns(table: pd.DataFrame, runs: pd.DataFrame, level: str) -> pd.DataFrame:
    """Sort MultiIndex columns by model name and :func:`arm_order` on the ``level`` axis."""
    rank = {arm: i for i, arm in enumerate(arm_order(runs))}
    names = list(table.columns.names)
    pos = names.index(level)
    return table.reindex(columns=sorted(table.columns, key=lambda c: tuple(
        rank.get(part, len(rank)) if i == pos else part for i, part in enumerate(c))))


def perplexity_table(runs: pd.DataFrame, dataset: str,
                     metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """Tables 1/2: rows = Run # (trial), columns = (model, arm), values = ``metric``.

    Every run with a value is shown (a diverged run shows its last number; the report lists
    it under "What could not run as asked"); failed or missing runs are NaN.
    """
    rows = _with_arm(runs[runs["dataset"] == dataset])
    numbers = pd.to_numeric(column(rows, metric), errors="coerce").astype(float)
    rows = rows.assign(value=numbers.where(rows["status"].isin(FINISHED)))
    table = rows.pivot_table(index="trial", columns=["model", "arm"], values="value",
                             aggfunc="first", dropna=False)
    table.index.name = "Run #"
    table = _order_columns(table, rows, "arm")
    table.columns.names = ["model", "optimizer"]
    return table


def memory_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Table 3: rows = (model, dataset), columns = arm, values = mean over finished trials.

    Uses the best memory figure any run recorded (:data:`MEMORY_KEYS`); returns the table and
    that figure's label (CPU runs have no GPU allocation, so their table is peak RSS).
    """
    for key, label in MEMORY_KEYS:
        values = pd.to_numeric(column(runs, key), errors="coerce")
        if values.notna().any():
            frame = _with_arm(runs).assign(value=values)
            frame = frame[frame["status"].isin(FINISHED)]
            table = frame.pivot_table(index=["model", "dataset"], columns="arm", values="value",
                                      aggfunc="mean")
            table.columns.name = None
            return table[[a for a in arm_order(frame) if a in table.columns]], label
    return pd.DataFrame(), "no memory figures recorded"


def timing_table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Tables 10/11: rows = Run #, columns = (arm, model, Train/Test time s).

    "Train" is ``timings.train_s``; "Test" is ``timings.eval_s``, the held-out scoring (the
    paper's test time). Runs that did not finish are NaN (their times are partial).
    """
    rows = _with_arm(runs[runs["dataset"] == dataset])
    rows = rows.assign(**{k: pd.to_numeric(column(rows, k), errors="coerce").astype(float)
                          .where(rows["status"].isin(FINISHED))
                          for k in (S.timings.train_s, S.timings.eval_s)})
    long = pd.concat([rows.assign(phase="Train (s)", value=column(rows, S.timings.train_s)),
                      rows.assign(phase="Test (s)", value=column(rows, S.timings.eval_s))])
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    table = long.pivot_table(index="trial", columns=["arm", "model", "phase"], values="value",
                             aggfunc="first", dropna=False)
    table.index.name = "Run #"
    order = {"Train (s)": 0, "Test (s)": 1}
    rank = {arm: i for i, arm in enumerate(arm_order(rows))}
    return table.reindex(columns=sorted(table.columns, key=lambda c: (rank[c[0]], c[1],
                                                                      order[c[2]])))


def perplexity_tables(runs: pd.DataFrame, metrics: Sequence[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """Tables 1/2 (:func:`perplexity_table`) by (metric, dataset), for each of ``metrics``."""
    datasets = sorted(runs["dataset"].unique())
    return {(m, d): perplexity_table(runs, d, m) for m in metrics for d in datasets}


@dataclass(frozen=True)
class Resources:
    """The memory-and-time section's numbers (:func:`resources`).

    Attributes:
        memory, memory_label: Table 3 and the memory figure it shows (:func:`memory_table`).
        time_metrics: the timing keys of :data:`TIME_METRICS` some run recorded.
        time_tables: Tables 10/11 per dataset (:func:`timing_table`; empty when no time was recorded).
        time_stats: :func:`analysis.compute.stats.stats_table` of ``time_metrics``.
    """

    memory: pd.DataFrame
    memory_label: str
    time_metrics: tuple[str, ...]
    time_tables: dict[str, pd.DataFrame]
    time_stats: pd.DataFrame


def resources(runs: pd.DataFrame) -> Resources:
    """Table 3, and Tables 10/11 with time statistics of the timings some run recorded."""
    memory, label = memory_table(runs)
    recorded = tuple(k for k in TIME_METRICS if column(runs, k).notna().any())
    return Resources(memory=memory, memory_label=label, time_metrics=recorded,
                     time_tables={d: timing_table(runs, d) for d in sorted(runs["dataset"].unique())}
                     if recorded else {},
                     time_stats=stats_table(runs, recorded) if recorded else pd.DataFrame())
