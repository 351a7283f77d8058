"""A run's mid-run checkpoints: the Trainer's ``checkpoint-<step>/`` folders under ``checkpoints/``,
each marked complete by the harness's resume state, and removed when the run finishes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from repeatability.records.artifacts import CHECKPOINTS, RESUME_STATE, read_json, write_json


def checkpoint_root(path: Path) -> Path:
    return path / CHECKPOINTS


def latest_checkpoint(path: Path) -> Path | None:
    """The newest complete checkpoint of an unfinished run (one holding ``RESUME_STATE``)."""
    root = checkpoint_root(path)
    if not root.is_dir():
        return None
    done = [c for c in root.glob("checkpoint-*") if (c / RESUME_STATE).exists() and c.name[11:].isdigit()]
    return max(done, key=lambda c: int(c.name[11:]), default=None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def write_resume_state(checkpoint: Path, state: dict[str, Any]) -> None:
    """Mark a checkpoint complete, with what the harness needs besides the Trainer's files."""
    write_json(checkpoint / RESUME_STATE, state)


def read_resume_state(checkpoint: Path) -> dict[str, Any]:
    return read_json(checkpoint / RESUME_STATE)


def remove_checkpoints(path: Path) -> None:
    shutil.rmtree(checkpoint_root(path), ignore_errors=True)


def remove_torn_checkpoints(path: Path) -> list[str]:
    """Remove the checkpoint folders a failed save left without ``RESUME_STATE`` (never resumed
    from, but they hold space, and the Trainer would count them among the two it keeps); return
    their names."""
    root = checkpoint_root(path)
    torn = sorted(c for c in root.glob("checkpoint-*") if c.is_dir() and not (c / RESUME_STATE).exists()) \
        if root.is_dir() else []
    for folder in torn:
        shutil.rmtree(folder, ignore_errors=True)
    return [folder.name for folder in torn]
