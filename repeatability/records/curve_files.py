"""A run's per-step CSV files: ``loss_curve.csv`` (one row per logged train step and per validation
evaluation) and ``optimizer_trace.csv`` (diagnostics.optimizer_trace=true), written whole and atomically,
read back with numbers parsed. Names: :mod:`repeatability.records.artifacts`."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
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


def _read_rows(file: Path, parse: Callable[[dict[str, str]], dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """Rows of a per-step CSV, each through ``parse``; ``[]`` when the file is absent; a row that
    does not parse is named with its line."""
    if not file.exists():
        return []
    rows = []
    with open(file, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), 2):
            try:
                rows.append(parse(row))
            except (KeyError, ValueError, TypeError):
                raise RunDirError(f"{file}:{line}: corrupted {what} row; re-run this trial") from None
    return rows


_TRACE_INTS = ("step", "optimizer_step", "n_params", "n_8bit_params")


def _trace_row(row: dict[str, str]) -> dict[str, Any]:
    return {k: v if k == "module_kind" else (int(v) if k in _TRACE_INTS else as_float(v)) for k, v in row.items()}


def _loss_row(row: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {"split": row["split"]}
    for key in LOSS_COLUMNS:
        if key != "split":
            parsed[key] = float(row[key]) if row[key] not in ("", None) else math.nan
    parsed["step"] = int(parsed["step"])
    return parsed


def read_optimizer_trace(path: Path) -> list[dict[str, Any]]:
    """Rows of ``optimizer_trace.csv`` with numbers parsed; ``[]`` when the run has none."""
    return _read_rows(path / OPTIMIZER_TRACE, _trace_row, "optimizer-trace")


def read_loss_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of ``loss_curve.csv`` with numbers parsed (empty cells become NaN)."""
    return _read_rows(path / LOSS_CURVE, _loss_row, "loss-curve")
