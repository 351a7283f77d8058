"""A study directory → tidy pandas frames, read only through :mod:`repeatability.records.artifacts`.

Nothing is dropped: failed, diverged, half-finished, unreadable and corrupted runs are rows of
``runs`` with their ``status``; whatever could not be read (or no longer matches the SHA-256 its
run recorded) is a :class:`Problem` and the rest of the study is still loaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from repeatability.records import adapter_files, artifacts, curve_files, eval_records, integrity
from repeatability.records import metrics as registry
from repeatability.records.errors import RunDirError
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

# Columns that identify a run in every frame; the summary's own `cell`/`trial` keys are checked
# against the directory name and not repeated.
ID_COLUMNS = ("run", "cell", "model", "dataset", "optim", "variant", "trial", "status")
FINISHED = artifacts.FINISHED_STATUSES  # complete, diverged: runs whose numbers are reported
_NONFINITE = {"nan", "inf", "-inf"}


class StudyError(Exception):
    """The study cannot be analysed at all (no such directory, or no run directory in it)."""


@dataclass(frozen=True)
class Problem:
    """Something in the study that could not be read as the contract says.

    ``run`` is the run's path relative to the study (or ``"."`` for the study itself),
    ``kind`` a short category (``summary``, ``state``, ``integrity``, ``loss_curve``,
    ``generations``, ``environment``, ``layout``, ``mismatch``), ``message`` the reader's own
    one-line error.
    """

    run: str
    kind: str
    message: str


@dataclass
class Study:
    """One study, loaded. Frames share the identifying columns in :data:`ID_COLUMNS`.

    ``runs``: one row per run directory (object columns: values as written; use
    ``pd.to_numeric`` for arithmetic), summary keys flattened with ``.`` (``metrics.
    perplexity_token_weighted``, ``optimizer.effective.bits`` ...), plus ``environment.*`` and
    ``state`` (what :func:`artifacts.run_state` said), ``integrity`` (finished runs: ``verified``
    against their manifest, ``no manifest`` for runs written before manifests, or
    ``corrupted``) and ``load_error``. ``status`` is the run's status, ``unreadable`` when its
    summary could not be read, or ``corrupted`` when a finished run's files no longer match its
    manifest (its numbers are then left out of every statistic, like any unfinished run's).
    ``curves``: one row per loss-curve row; ``generations``: one row per generation.
    """

    path: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    generations: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → one level with dotted keys; the contract's ``"nan"``/``"inf"`` → floats.

    Lists stay as values (e.g. ``model.lora.target_modules``).
    """
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        if not obj and prefix:
            out[prefix] = None
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, str) and obj in _NONFINITE:
        out[prefix] = artifacts.as_float(obj)
    else:
        out[prefix] = obj
    return out


def _read_summary(path: Path, rel: str, problems: list[Problem]) -> dict[str, Any]:
    """The flattened summary; ``{}`` when the run has not written one yet (half-finished: not a
    problem); ``{"load_error": ...}`` and a problem when it is corrupted or of another schema.
    """
    if not artifacts.has_summary(path):
        return {}
    try:
        return flatten(artifacts.read_summary(path))
    except RunDirError as exc:
        problems.append(Problem(rel, "summary", str(exc)))
        return {"load_error": str(exc)}


def _check_identity(row: dict[str, Any], rel: str, problems: list[Problem]) -> None:
    """The summary's own cell/trial must agree with the directory it lies in."""
    for key in ("model", "dataset", "optim", "variant"):
        said = row.pop(getattr(S.cell, key), None)
        if said is not None and said != row[key]:
            problems.append(Problem(rel, "mismatch", f"summary cell.{key}={said!r}, directory "
                                    f"says {row[key]!r}"))
    said_trial = row.pop("summary_trial", None)
    if said_trial is not None and said_trial != row["trial"]:
        problems.append(Problem(rel, "mismatch", f"summary trial={said_trial}, directory says "
                                f"{row['trial']}"))


def _check_integrity(path: Path, row: dict[str, Any], problems: list[Problem]) -> None:
    """A finished run whose files do not match its manifest is ``corrupted`` and a problem."""
    try:
        row["integrity"] = "verified" if integrity.verify_manifest(path) else "no manifest"
        if row["integrity"] == "verified" and not adapter_files.weights_kept(path):
            row["integrity"] = "verified; adapter weights not kept"
    except RunDirError as exc:
        problems.append(Problem(row["run"], "integrity", str(exc)))
        row.update(status="corrupted", integrity="corrupted", load_error=str(exc))


# summary metrics that an evaluation record (evals/<name>.json, python -m repeatability.rescore) replaces
EVAL_METRICS = registry.names("eval")


def _use_eval(path: Path, row: dict[str, Any], name: str, problems: list[Problem]) -> None:
    """Replace the run's held-out metrics by those of its evaluation ``name``; a finished run
    without it gets the status ``no evaluation`` (left out of every statistic) and a problem."""
    try:
        metrics = eval_records.read_eval(path, name)["metrics"]
    except RunDirError as exc:
        problems.append(Problem(row["run"], "evaluation", str(exc)))
        row.update(status="no evaluation", load_error=str(exc))
        return
    for key in EVAL_METRICS:
        row[f"metrics.{key}"] = flatten(metrics.get(key, math.nan), "x")["x"]
    row["evaluation"] = name


def _run_row(path: Path, study: Path, problems: list[Problem], eval_name: str | None = None) -> dict[str, Any] | None:
    """One row of the runs frame; ``None`` (and a problem) when the path is not a run dir."""
    rel = str(path.relative_to(study))
    try:
        cell = artifacts.parse_cell_dirname(path.parent.name)
        trial = artifacts.parse_trial_dirname(path.name)
    except RunDirError as exc:
        problems.append(Problem(rel, "layout", str(exc)))
        return None
    try:
        state = artifacts.run_state(path)
    except RunDirError as exc:
        problems.append(Problem(rel, "state", str(exc)))
        state, error = "unreadable", str(exc)
    else:
        error = None
    row: dict[str, Any] = {"run": rel, "cell": path.parent.name, "model": cell.model,
                           "dataset": cell.dataset, "optim": cell.optim, "variant": cell.variant,
                           "trial": trial, "status": state, "state": state, "load_error": error}
    summary = _read_summary(path, rel, problems) if state != "unreadable" else {}
    summary.pop("status", None)
    summary.pop("schema_version", None)
    if "trial" in summary:
        summary["summary_trial"] = summary.pop("trial")
    row.update(summary)
    if row["load_error"]:
        row["status"] = "unreadable"
    elif row["status"] in FINISHED:
        _check_integrity(path, row, problems)
    if eval_name and row["status"] in FINISHED and not row.get("imported.source"):
        _use_eval(path, row, eval_name, problems)
    _check_identity(row, rel, problems)
    try:
        row.update(flatten(artifacts.read_environment(path), "environment"))
    except RunDirError as exc:
        problems.append(Problem(rel, "environment", str(exc)))
    return row


def _long_rows(path: Path, ids: dict[str, Any], problems: list[Problem]) -> tuple[list, list]:
    """Loss-curve and generation rows of one run, each tagged with the run's ids."""
    curves: list[dict[str, Any]] = []
    gens: list[dict[str, Any]] = []
    try:
        curves = [{**ids, **r} for r in curve_files.read_loss_curve(path)]
    except RunDirError as exc:
        problems.append(Problem(ids["run"], "loss_curve", str(exc)))
    try:
        gens = [{**ids, **r} for r in artifacts.read_generations(path)]
    except RunDirError as exc:
        problems.append(Problem(ids["run"], "generations", str(exc)))
    return curves, gens


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...], dtype: Any = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, dtype=dtype)
    for col in columns:
        if col not in frame.columns:
            frame[col] = pd.Series(dtype="object")
    rest = [c for c in frame.columns if c not in columns]
    return frame[list(columns) + rest]


def load_study(path: str | Path, eval_name: str | None = None) -> Study:
    """Load every run directory of ``path`` (a ``results/<study>`` folder).

    With ``eval_name``, each finished run's held-out metrics (:data:`EVAL_METRICS`) are those of
    its evaluation record ``evals/<eval_name>.json`` instead of its training summary's.

    Raises:
        StudyError: ``path`` is not a directory, or holds no run directory at all.
    """
    study = Path(path)
    if not study.is_dir():
        raise StudyError(f"{study}: no such study directory")
    problems: list[Problem] = []
    runs, curves, gens = [], [], []
    for run_path in artifacts.iter_run_dirs(study):
        row = _run_row(run_path, study, problems, eval_name)
        if row is None:
            continue
        runs.append(row)
        ids = {k: row[k] for k in ID_COLUMNS}
        run_curves, run_gens = _long_rows(run_path, ids, problems)
        curves += run_curves
        gens += run_gens
    if not runs:
        raise StudyError(f"{study}: no run directories (expected <model>__<dataset>__<optim>/"
                         "trial-NN inside)")
    for problem in problems:
        log.warning("%s: %s: %s", problem.run, problem.kind, problem.message)
    # object dtype keeps each value as the summary wrote it: a seed stays an int, a flag a bool,
    # even when another run (half-finished) has no value for that key
    runs_frame = _frame(runs, ID_COLUMNS, dtype=object)
    runs_frame["trial"] = runs_frame["trial"].astype(int)  # not astype({...}): one block per column
    runs_frame = runs_frame.sort_values(["cell", "trial"], ignore_index=True)
    curves_frame = _frame(curves, ID_COLUMNS + artifacts.LOSS_COLUMNS)
    gens_frame = _frame(gens, ID_COLUMNS + ("prompt_index", "mode", "completion"))
    log.info("%s: %d runs, %d loss rows, %d generations, %d problems", study, len(runs_frame),
             len(curves_frame), len(gens_frame), len(problems))
    return Study(study, runs_frame, curves_frame, gens_frame, problems)


def finite(values: pd.Series) -> pd.Series:
    """Numeric values of a column that are finite (``None``/NaN/inf removed)."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    return numbers[numbers.map(math.isfinite)]


def column(frame: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """``frame[name]`` or a column of ``default`` when no run recorded that key."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([default] * len(frame), index=frame.index, dtype="object")


def is_imported(runs: pd.DataFrame) -> pd.Series:
    """True for runs imported from a published table (``imported`` in their summary): they
    record only what the source reports, never seeds, adapters, curves or an environment."""
    return column(runs, S.imported.source).notna()


def optim_bits(runs: pd.DataFrame) -> pd.Series:
    """Requested optimizer bits per run, for ordering arms (8-bit before 32-bit).

    ``optimizer.requested.optim_bits`` when the run recorded it; otherwise (imported runs) the
    number before ``bit`` in the optimizer's name (``paged_adamw_8bit`` → 8); else NaN.
    """
    recorded = pd.to_numeric(column(runs, S.optimizer.requested.optim_bits), errors="coerce")
    named = pd.to_numeric(runs["optim"].astype(str).str.extract(r"(\d+)bit", expand=False),
                          errors="coerce")
    return recorded.fillna(named).astype(float)
