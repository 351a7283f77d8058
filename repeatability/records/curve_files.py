"""A run's per-step CSV files: ``loss_curve.csv`` (one row per logged train step and per validation
evaluation) and ``optimizer_trace.csv`` (diagnostics.optimizer_trace=true), written whole and atomically,
read back with numbers parsed. Names: :mod:`repeatability.records.artifacts`."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from repeatability.records.artifacts import LOSS_COLUMNS, LOSS_CURVE, OPTIMIZER_TRACE, as_float, write_text
from repeatability.records.errors import RunDirError


def write_loss_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOSS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOSS_COLUMNS})
    write_text(path / LOSS_CURVE, buf.getvalue())


def write_optimizer_trace(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """``optimizer_trace.csv``: one row per traced step and module kind (``all`` = every kind)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path / OPTIMIZER_TRACE, buf.getvalue())


def read_optimizer_trace(path: Path) -> list[dict[str, Any]]:
    """Rows of ``optimizer_trace.csv`` with numbers parsed; ``[]`` when the run has none."""
    file = path / OPTIMIZER_TRACE
    if not file.exists():
        return []
    rows = []
    with open(file, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), 2):
            try:
                rows.append({k: v if k == "module_kind" else (int(v) if k in ("step", "optimizer_step", "n_params", "n_8bit_params") else as_float(v))
                             for k, v in row.items()})
            except (TypeError, ValueError):
                raise RunDirError(f"{file}:{line}: corrupted optimizer-trace row; re-run this trial") from None
    return rows


def read_loss_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of ``loss_curve.csv`` with numbers parsed (empty cells become NaN)."""
    file = path / LOSS_CURVE
    if not file.exists():
        return []
    rows = []
    with open(file, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), 2):
            try:
                parsed: dict[str, Any] = {"split": row["split"]}
                for key in LOSS_COLUMNS:
                    if key != "split":
                        parsed[key] = float(row[key]) if row[key] not in ("", None) else math.nan
                parsed["step"] = int(parsed["step"])
            except (KeyError, ValueError, TypeError):
                raise RunDirError(f"{file}:{line}: corrupted loss-curve row; re-run this trial") from None
            rows.append(parsed)
    return rows
