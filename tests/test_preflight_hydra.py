"""Preflight checks exactly the jobs Hydra launches: for every experiment file and every
multirun command line of the README and Makefile, preflight's job list (overrides and order)
equals what Hydra's own sweeper hands its launcher in a real ``-m`` run of the entry point."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins

from repeatability.launching import preflight

ROOT = Path(__file__).resolve().parent.parent


def _readme_sweeps() -> list[list[str]]:
    """Every ``python -m repeatability.run -m ...`` line of README.md and the Makefile's study."""
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")  # shell line continuations
    lines = re.findall(r"python -m repeatability\.run (-m [^#\n]+)", readme)
    make = re.search(r"^STUDY_ARGS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert make is not None and len(lines) >= 5
    return [[a for a in shlex.split(line) if a != "-m"] for line in [*lines, make.group(1)]]


COMMANDS = [[f"experiments={name}"] for name in preflight.group_choices("experiments")] + _readme_sweeps()


class _Recorder:
    """Stands in for the launcher: records the job overrides the sweeper hands over."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] = []

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list:
        self.jobs += [list(j) for j in job_overrides]
        return []


def _hydra_jobs(args: list[str], results: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    from repeatability import run

    recorder = _Recorder()
    monkeypatch.setattr(Plugins, "instantiate_launcher", lambda self, **kwargs: recorder)
    monkeypatch.setattr(BasicSweeper, "validate_batch_is_legal", lambda self, batch: None)
    monkeypatch.setattr(sys, "argv", ["repeatability.run", "-m", *args, preflight.SEARCHPATH_OVERRIDE])
    try:
        run._hydra_main()
    finally:
        GlobalHydra.instance().clear()
    return recorder.jobs


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_preflight_expands_like_hydra(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*args, f"results_dir={tmp_path}"]
    hydra_jobs = _hydra_jobs(args, tmp_path, monkeypatch)
    preflight.register_configs()
    GlobalHydra.instance().clear()
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(preflight.CONF_DIR), version_base="1.3"):
        ours = preflight.expand_jobs(args, multirun=True)
    GlobalHydra.instance().clear()
    assert len(hydra_jobs) >= 2 and ours == hydra_jobs
