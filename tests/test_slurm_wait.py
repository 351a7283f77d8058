"""The SLURM launcher's bounded wait (repeatability.launching.slurm_wait) with fake jobs and a fake
clock: no cluster needed. The real cluster's stopped controller: tests/test_slurm.py."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from repeatability.config.errors import ConfigError
from repeatability.launching import slurm_preflight, slurm_wait, sweep


class FakePaths:
    def __init__(self, folder: Path, job_id: str) -> None:
        self.result_pickle = folder / f"{job_id}_0_result.pkl"
        self.stderr = folder / f"{job_id}_0_log.err"


class FakeJob:
    """What the wait uses of a submitit job."""

    def __init__(self, folder: Path, job_id: str) -> None:
        self.job_id, self.paths = job_id, FakePaths(folder, job_id)

    def finish(self) -> None:
        self.paths.result_pickle.write_text("done")

    def results(self) -> list[str]:
        return [f"result of {self.job_id}"]


class Cluster:
    """A fake clock, and what SLURM answers at each time: ``script[job]`` is a list of
    ``(from_time, state or None)``; ``finish[job]`` the time its result file appears."""

    def __init__(self, jobs: list[FakeJob], script: dict[str, list[tuple[float, str | None]]],
                 finish: dict[str, float]) -> None:
        self.now, self.jobs, self.script, self.finish = 0.0, {j.job_id: j for j in jobs}, script, finish
        self.probes: list[tuple[float, list[str], float]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for job, at in self.finish.items():
            if self.now >= at and not self.jobs[job].paths.result_pickle.exists():
                self.jobs[job].finish()

    def probe(self, job_ids: list[str], timeout_s: float) -> dict[str, str]:
        self.probes.append((self.now, list(job_ids), timeout_s))
        answers = {}
        for job in job_ids:
            current = [state for since, state in self.script.get(job, []) if since <= self.now]
            if current and current[-1] is not None:
                answers[job] = current[-1]
        return answers


def _wait(tmp_path: Path, script: dict, finish: dict, bound_s: float, n: int = 2):
    jobs = [FakeJob(tmp_path, f"7_{i}") for i in range(n)]
    cluster = Cluster(jobs, script, finish)
    outcomes = slurm_wait.wait(jobs, [f"trial={i + 1}" for i in range(n)], bound_s, cluster.probe, cluster.clock,
                               cluster.sleep)
    return outcomes, cluster


def test_a_job_slurm_stops_answering_about_is_lost_after_the_bound(tmp_path: Path) -> None:
    # both run; at t=30 the controller stops answering; job 0's result arrives at t=40 all the same
    script = {"7_0": [(0, "RUNNING"), (30, None)], "7_1": [(0, "RUNNING"), (30, None)]}
    (done, lost), cluster = _wait(tmp_path, script, {"7_0": 40}, bound_s=20)
    assert (done.status, done.result) == (None, "result of 7_0")
    assert lost.status == "lost" and lost.line.startswith("slurm job 7_1 (trial=2): no answer from SLURM for ")
    assert lost.line.endswith("s (bound hydra.launcher.unanswered_wait_s=20); recorded as lost, re-run the command "
                              "to take it over")
    last_answer = max(t for t, _, _ in cluster.probes if t < 30)
    assert 20 < cluster.now - last_answer <= 20 + slurm_wait.POLL_S  # gave up within a second of the bound
    assert int(lost.line.split("for ")[1].split(" s")[0]) == round(cluster.now - last_answer)
    # a question every bound/10 (at least 2 s), the first 2 s after submission, each allowed 10 s
    # or, once SLURM is silent, what is left of the bound (at least 1 s)
    assert [t for t, _, _ in cluster.probes][:3] == [2, 4, 6]
    assert all(limit == min(10, max(1, (t if t < 30 else last_answer) + 20 - t)) for t, _, limit in cluster.probes)
    assert cluster.probes[-1][2] == 1
    assert cluster.probes[-1][1] == ["7_1"]  # only the jobs still waited for


def test_the_bound_is_not_a_bound_on_run_time(tmp_path: Path) -> None:
    """PENDING then RUNNING for ten times the bound: answered all along, so waited for."""
    script = {"7_0": [(0, "PENDING"), (50, "RUNNING")]}
    [done], cluster = _wait(tmp_path, script, {"7_0": 200}, bound_s=20, n=1)
    assert done.status is None and cluster.now == pytest.approx(200, abs=1)


def test_a_job_that_ended_without_a_result_is_failed_after_the_grace(tmp_path: Path) -> None:
    script = {"7_0": [(0, "RUNNING"), (9, "CANCELLED")]}
    [failed], cluster = _wait(tmp_path, script, {}, bound_s=1800, n=1)
    assert failed.status == "failed" and cluster.now < 10 + slurm_wait.RESULT_GRACE_S + 60
    assert failed.line.startswith("slurm job 7_0 (trial=1) ended CANCELLED without a result: no 7_0_0_result.pkl "
                                  "after 15 s; see ")
    # SLURM saw it end at its probe of t=62 (one a minute); a result file by t=77 (a slow shared
    # filesystem) is still a result
    slow = tmp_path / "slow"
    slow.mkdir()
    [done], cluster = _wait(slow, {"7_0": [(0, "RUNNING"), (9, "COMPLETED")]}, {"7_0": 70}, bound_s=1800, n=1)
    assert done.status is None and [t for t, _, _ in cluster.probes] == [2, 62]


def test_the_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unanswered_wait_s must be > 0"):
        slurm_wait.wait([FakeJob(tmp_path, "1")], ["trial=1"], 0)
    with pytest.raises(ConfigError, match=r"^hydra.launcher.unanswered_wait_s=0 must be a positive number"):
        slurm_preflight.check_resources(OmegaConf.create({"unanswered_wait_s": 0}), needs_gpu=False)


def test_states_are_parsed_from_squeue_and_sacct_lines() -> None:
    text = "JOBID|STATE\n12_[0-2%2]|PENDING\n12_3|RUNNING\n13|CANCELLED by 0\n12_4.batch|COMPLETED\n14|\n"
    assert slurm_wait._parse(text) == {"12_0": "PENDING", "12_1": "PENDING", "12_2": "PENDING", "12_3": "RUNNING",
                                       "13": "CANCELLED"}


def _fake_clients(folder: Path, squeue: str, sacct: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.mkdir()
    for name, body in (("squeue", squeue), ("sacct", sacct)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_the_controller_answers_and_accounting_only_for_jobs_that_ended(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # the controller is down (squeue fails); accounting still says what it last heard
    _fake_clients(tmp_path / "a", "echo 'error: Socket timed out' >&2; exit 1",
                  "printf 'JobID|State\\n5_0|RUNNING\\n5_1|FAILED\\n'", monkeypatch)
    assert slurm_wait.slurm_states(["5_0", "5_1"], 5) == {"5_1": "FAILED"}
    # the controller answers for the jobs it lists; sacct is not asked when it lists them all
    _fake_clients(tmp_path / "b", "echo '5_0|RUNNING'; echo '5_1|PENDING'", "exit 3", monkeypatch)
    assert slurm_wait.slurm_states(["5_0", "5_1"], 5) == {"5_0": "RUNNING", "5_1": "PENDING"}
    # a client that hangs (a stopped controller) is killed at the timeout: no answer
    _fake_clients(tmp_path / "c", "sleep 30", "sleep 30", monkeypatch)
    started = time.monotonic()
    assert slurm_wait.slurm_states(["5_0"], 0.5) == {}
    assert time.monotonic() - started < 5


def test_lost_runs_fail_the_sweep_and_are_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = tmp_path / sweep.LEDGER
    line = ("slurm job 7_1 (trial=2): no answer from SLURM for 21 s (bound hydra.launcher.unanswered_wait_s=20); "
            "recorded as lost, re-run the command to take it over")
    sweep.append_ledger({"run_dir": str(tmp_path / "c" / "trial-01"), "status": "complete"}, ledger)
    sweep.append_ledger({"run_dir": None, "status": "lost", "error": line, "slurm_job": "7_1"}, ledger)
    with caplog.at_level(logging.INFO, logger="repeatability"), pytest.raises(SystemExit) as exc:
        sweep.SweepReport()._finish(ledger)
    assert exc.value.code == 1
    assert "sweep finished: 2 runs (1 complete, 1 lost)" in caplog.text and f"  lost: {line}" in caplog.text
    assert "1 run(s) lost: SLURM stopped answering" in caplog.text and "run(s) failed" not in caplog.text
