"""Hydra's joblib launcher (local parallel trials): every trial runs in a worker and lands in its
run directory, and the ledger collects the workers' outcomes for the end-of-sweep report.

Bitwise equality with the basic launcher is not asserted: on a loaded 2-core machine one of
five parallel runs gave a different adapter than the same trial run sequentially (see the
issue notes); `determinism=strict` studies should use the basic launcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from repeatability import artifacts
from tests.conftest import run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_32bit"


def test_joblib_launcher_runs_trials_in_parallel(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, optim="paged_adamw_32bit")
    assert run_cli(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "study=par",
                    "trial=1,2", *args]) == 0
    par = [tmp_path / "par" / CELL / f"trial-0{t}" for t in (1, 2)]
    assert [artifacts.run_state(p) for p in par] == ["complete", "complete"]
    one, two = (artifacts.read_summary(p) for p in par)
    assert one["trial"] == 1 and two["trial"] == 2 and one["adapter"]["sha256"] != two["adapter"]["sha256"]
    ledgers = list((tmp_path / "par" / "_sweeps").glob("*/ledger.jsonl"))
    assert len(ledgers) == 1 and len(ledgers[0].read_text().splitlines()) == 2
