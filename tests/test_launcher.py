"""Hydra's joblib launcher (local parallel trials) gives the same bits as the basic launcher.

(Before the harness pinned bitsandbytes' CPU 4-bit layout, this was flaky: whichever parallel
worker scored the base model first trained with broken gradients.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from repeatability.records import artifacts
from tests.conftest import run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_32bit"


def test_joblib_launcher_runs_trials_in_parallel(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, optim="paged_adamw_32bit")
    assert run_cli(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "study=par",
                    "trial=1,2", *args]) == 0
    assert run_cli(["study=seq", "trial=1", *args]) == 0
    par = [tmp_path / "par" / CELL / f"trial-0{t}" for t in (1, 2)]
    assert [artifacts.run_state(p) for p in par] == ["complete", "complete"]
    seq = artifacts.read_summary(tmp_path / "seq" / CELL / "trial-01")
    assert artifacts.read_summary(par[0])["adapter"]["sha256"] == seq["adapter"]["sha256"]
    assert artifacts.read_summary(par[1])["adapter"]["sha256"] != seq["adapter"]["sha256"]
    ledgers = list((tmp_path / "par" / "_sweeps").glob("*/ledger.jsonl"))
    assert len(ledgers) == 1 and len(ledgers[0].read_text().splitlines()) == 2


def test_parallel_jobs_split_the_cores(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """Without determinism.threads, each of n_jobs workers gets cores // n_jobs torch threads."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, optim="paged_adamw_32bit",
                          **{"determinism.threads": "null"})
    assert run_cli(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "study=budget",
                    "trial=1,2", *args]) == 0
    for t in (1, 2):
        det = artifacts.read_summary(tmp_path / "budget" / CELL / f"trial-0{t}")["determinism"]
        budget = det["thread_budget"]
        assert budget["parallel_jobs"] == 2 and budget["source"] == "joblib n_jobs=2"
        assert budget["threads"] == max(1, budget["cores"] // 2) == det["torch_num_threads"]


def test_thread_budget_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from repeatability.launching.threads import thread_budget

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert thread_budget(None) == {"threads": 6, "cores": 6, "parallel_jobs": 1, "source": "SLURM_CPUS_PER_TASK=6"}
    assert thread_budget(2)["threads"] == 2 and thread_budget(2)["source"] == "determinism.threads"
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert thread_budget(None)["source"] == "one process"


def test_xdist_workers_get_their_own_cores() -> None:
    """make test runs 2 xdist workers; each must hold its own share of the cores (tests/conftest.py),
    so the thread budget of a run inside a worker does not oversubscribe the machine."""
    import os

    from repeatability.launching.threads import thread_budget

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or (os.cpu_count() or 1) < workers:
        pytest.skip("not under pytest -n 2+ on a machine with that many cores")
    mine = os.sched_getaffinity(0)
    assert 1 <= len(mine) <= (os.cpu_count() or 1) // workers  # not every core
    assert thread_budget(None)["threads"] == len(mine) and os.environ["OMP_NUM_THREADS"] == str(len(mine))


def test_launchers_are_classified_in_one_place() -> None:
    from repeatability.launching import launchers

    basic = launchers.classify({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    assert (basic.kind, basic.parallel_jobs, basic.remote) == ("basic", 1, False)
    joblib = launchers.classify({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                 "n_jobs": 3})
    assert (joblib.kind, joblib.parallel_jobs, joblib.source) == ("joblib", 3, "joblib n_jobs=3")
    every = launchers.classify({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                "n_jobs": -1})
    assert every.parallel_jobs == launchers.cores()
    ours = launchers.classify({"_target_": "hydra_plugins.repeatability_launcher.slurm_launcher."
                                            "RepeatabilitySlurmLauncher", "cpus_per_task": 8})
    assert (ours.kind, ours.parallel_jobs, ours.remote, ours.source) == ("slurm", 1, True, "SLURM cpus_per_task=8")
    ray = launchers.classify({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"})
    assert (ray.kind, ray.parallel_jobs, ray.remote) == ("unknown", launchers.cores(), False)  # never oversubscribe
    assert launchers.classify(None).source == "one process"


def test_thread_budget_counts_live_runs_of_other_launchers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two launchers on one 2-core host each took both cores; their runs side by side took 2.4-6.3
    min against 28 s alone. The budget now counts the other launcher's live claims on this host."""
    import dataclasses
    import subprocess
    import sys

    from repeatability.launching import claims, launchers
    from repeatability.launching.threads import thread_budget

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(launchers, "cores", lambda: 2)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "study" / "cell" / "trial-01"
        run.parent.mkdir(parents=True)
        mine = claims._new_holder()
        theirs = dataclasses.replace(mine, pid=other.pid, pid_started=claims._proc_stat(other.pid)[1],
                                     launcher_pid=other.pid)
        artifacts.write_json(artifacts.claim_file(run), dataclasses.asdict(theirs))
        mine_run = run.with_name("trial-02")
        artifacts.write_json(artifacts.claim_file(mine_run), dataclasses.asdict(mine))  # my own: not counted
        assert claims.other_live_jobs(tmp_path) == 1
        budget = thread_budget(None, tmp_path)
        assert budget == {"threads": 1, "cores": 2, "parallel_jobs": 2,
                          "source": "one process + 1 live run(s) of other launchers on this host"}
    finally:
        other.kill()
        other.wait()
    assert claims.other_live_jobs(tmp_path) == 0  # its process is gone: a dead claim takes no core
    assert thread_budget(None, tmp_path)["threads"] == 2


def test_the_trial_polls_the_launchers_stop_check() -> None:
    """The trial never imports a launcher: preemption sets the stop check the trainer polls each step
    (repeatability.trial.stopping), and the sweep catches the trial's Preempted."""
    import signal

    from repeatability.launching import preemption
    from repeatability.trial import stopping

    preemption.install()  # outside a SLURM job: no handler changes, but the check is set
    assert stopping.requested() is None
    preemption._defer(signal.SIGTERM, None)  # what the handler does when SLURM sends it
    assert stopping.requested() == signal.SIGTERM
    preemption.install()  # a new job starts clean
    assert stopping.requested() is None
    assert preemption.Preempted is stopping.Preempted
