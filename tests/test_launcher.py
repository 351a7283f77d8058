"""Launchers and the thread budget. A real parallel sweep (joblib, two workers: notices once, half
the cores each, the bits of a trial run alone) is tests/test_notices.py's
``test_parallel_sweep_in_its_own_process``: one sweep for all of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from repeatability.records import artifacts


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
