"""Evaluations of a finished run's adapter, written after the run (``python -m repeatability.rescore``):
``<run>/evals/<name>.json``, one record per evaluation; the summary is never touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repeatability.records.artifacts import DONE, read_json, write_json
from repeatability.records.errors import RunDirError

EVALS = "evals"  # evals/<name>.json: evaluations of a finished run's adapter (python -m repeatability.rescore)


EVAL_SCHEMA_VERSION = 1


def _check_eval_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise RunDirError(f"evaluation name {name!r}: use letters, digits, '.', '_' or '-'")


def eval_file(path: Path, name: str) -> Path:
    """``<run>/evals/<name>.json``: one evaluation of the run's adapter, written after it finished."""
    _check_eval_name(name)
    return path / EVALS / f"{name}.json"


def write_eval(path: Path, name: str, record: dict[str, Any], force: bool = False) -> Path:
    """Write an evaluation record of a finished run (the summary is never touched).

    Raises:
        RunDirError: the run is not finished, or ``evals/<name>.json`` exists and not ``force``.
    """
    if not (path / DONE).exists():
        raise RunDirError(f"{path}: not a finished run; only finished runs are evaluated")
    file = eval_file(path, name)
    if file.exists() and not force:
        raise RunDirError(f"{file}: evaluation {name!r} exists; pick another name or pass --force")
    write_json(file, {"schema_version": EVAL_SCHEMA_VERSION, "name": name, **record})
    return file


def read_eval(path: Path, name: str) -> dict[str, Any]:
    """The run's evaluation ``name``, checked for its schema version."""
    record = read_json(eval_file(path, name))
    if not isinstance(record, dict) or record.get("schema_version") != EVAL_SCHEMA_VERSION:
        raise RunDirError(f"{eval_file(path, name)}: not an evaluation record of schema {EVAL_SCHEMA_VERSION}")
    return record


def list_evals(path: Path) -> list[str]:
    """Names of the run's evaluation records, sorted."""
    folder = path / EVALS
    return sorted(f.stem for f in folder.glob("*.json")) if folder.is_dir() else []


RUN_TASKS = "tasks"  # evals/tasks.json: the task evaluators' per-example outputs, written by the run itself


def write_run_tasks(path: Path, record: dict[str, Any]) -> Path:
    """Write the run's own task record (``evals/tasks.json``: scores under ``metrics``, then every
    example's prediction) before the run is marked done; the manifest covers it."""
    if (path / DONE).exists():
        raise RunDirError(f"{path}: holds a finished run; "
                          "its task record is written by python -m repeatability.rescore")
    file = eval_file(path, RUN_TASKS)
    write_json(file, {"schema_version": EVAL_SCHEMA_VERSION, "name": RUN_TASKS, **record})
    return file
