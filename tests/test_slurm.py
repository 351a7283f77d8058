"""The ``slurm`` tier: sweeps through the project's own ``hydra/launcher=slurm`` on a real
single-node SLURM cluster started on this machine (tests/slurm_cluster.py).

Skips only where the tier cannot run (not root, or the Debian packages missing: ``make
slurm-packages`` installs them), saying so; a cluster that is installed but does not start fails.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmJobEnvironment

from repeatability.launching import claims, slurm_wait
from repeatability.records import artifacts, integrity
from tests.conftest import ROOT, run_cli, tiny_overrides
from tests.slurm_cluster import LocalSlurm, missing

pytestmark = pytest.mark.slurm

CELL8, CELL32 = "tiny__tq__paged_adamw_8bit", "tiny__tq__paged_adamw_32bit"
# fits the node: one CPU per job (two jobs at once on 2 cores), 3 GB each, no GPU
FIT = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
       "hydra.launcher.timeout_min=20"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    why = missing()
    if why:
        pytest.skip(f"slurm tier not run: {why}")
    c = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except Exception as exc:  # noqa: BLE001 - whatever failed, stop the daemons and show their log
        c.stop()
        pytest.fail(f"the local SLURM cluster did not start: {exc}\n{c.log_tail()}")
    saved = {k: os.environ.get(k) for k in c.env()}
    os.environ.update(c.env())  # clients here, and the jobs (sbatch exports this environment)
    yield c
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    c.stop()


def _ledger(study: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((study / "_sweeps").glob("*/ledger.jsonl"))
            for line in f.read_text().splitlines()]


def _squeue(job: str) -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i|%T", "-j", job], capture_output=True, text=True,
                         check=False)
    return [tuple(line.split("|")) for line in out.stdout.split()]  # type: ignore[misc]


def _job_state(job: str) -> tuple[str, int]:
    """The job's state and how many times SLURM has restarted it (``scontrol show job``)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=False).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState", "UNKNOWN"), int(fields.get("Restarts", "0") or 0)


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    """The real command line in a subprocess (its exit code and output are the user's)."""
    return subprocess.Popen([sys.executable, "-m", "repeatability.run", *args], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for(predicate, what: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"sweep ended (rc {proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{log.read_text()[-3000:] if log else ''}")


def _array_job(study: Path) -> str | None:
    """The SLURM array job id of the study's sweep (submitit's folder is named after it)."""
    folders = [p.name for p in study.glob("_sweeps/*/.submitit/*") if p.name.split("_")[0].isdigit()]
    return folders[0].split("_")[0] if folders else None


def test_sweep_of_2_trials_x_2_optimizers_through_slurm(cluster: LocalSlurm, tiny_model_dir: Path,
                                                         quotes_jsonl: Path, tmp_path: Path) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, optim="paged_adamw_8bit,paged_adamw_32bit",
                          **{"determinism.threads": "null"})  # the thread budget comes from SLURM
    assert run_cli(["-m", *FIT, "study=sl", "trial=1,2", *args]) == 0, cluster.log_tail()
    study = tmp_path / "sl"
    runs = [study / cell / f"trial-0{t}" for cell in (CELL8, CELL32) for t in (1, 2)]
    for run in runs:
        assert artifacts.run_state(run) == "complete"
        integrity.verify_manifest(run)
        s = artifacts.read_summary(run)
        assert s["status"] == "complete" and s["metrics"]["steps"] == 4
        # each job ran with the CPUs SLURM gave it: 1 torch thread
        assert s["determinism"]["thread_budget"] == {"threads": 1, "cores": 1, "parallel_jobs": 1,
                                                     "source": "SLURM_CPUS_PER_TASK=1"}
        assert not (run / artifacts.CHECKPOINTS).exists()
    ledger = _ledger(study)
    assert sorted(e["status"] for e in ledger) == ["complete"] * 4
    assert sorted(e["run_dir"] for e in ledger) == sorted(map(str, runs))
    # same seeds and threads (1), same bits as the local launcher (trial 1, 8-bit)
    assert run_cli(["study=loc", "trial=1", *tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path,
                                                            optim="paged_adamw_8bit")]) == 0
    local = artifacts.read_summary(tmp_path / "loc" / CELL8 / "trial-01")
    assert artifacts.read_summary(runs[0])["adapter"]["sha256"] == local["adapter"]["sha256"]


def test_cancelled_job_is_a_failed_run_and_the_sweep_fails(cluster: LocalSlurm, tiny_model_dir: Path,
                                                           quotes_jsonl: Path, tmp_path: Path) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, optim="paged_adamw_32bit",
                          **{"train.max_steps": 400, "train.checkpoint_every": 0})
    log = tmp_path / "sweep.log"
    proc = _launch(["-m", *FIT, "study=cx", "trial=1,2", *args], log)
    study = tmp_path / "cx"
    array = _wait_for(lambda: _array_job(study), "the array job", 120, proc, log)
    _wait_for(lambda: (f"{array}_1", "RUNNING") in _squeue(array), "job _1 to run", 120, proc, log)
    subprocess.run(["scancel", f"{array}_1"], check=True)
    # the other job is cut short too, by hand, so the test does not wait for 400 steps
    _wait_for(lambda: (f"{array}_1", "CANCELLED") in _squeue(array), "the cancel", 60, proc, log)
    subprocess.run(["scancel", f"{array}_0"], check=True)
    rc = proc.wait(timeout=300)
    out = log.read_text()
    assert rc == 1, out[-3000:]
    failed = [e for e in _ledger(study) if e["status"] == "failed"]
    assert sorted(e["slurm_job"] for e in failed) == [f"{array}_0", f"{array}_1"]
    assert all("CANCELLED" in e["error"] and "trial=" in e["error"] for e in failed)
    assert "2 run(s) failed" in out and f"slurm job {array}_1" in out
    for t in (1, 2):  # never marked done; a re-run redoes (or resumes) them
        assert artifacts.run_state(study / CELL32 / f"trial-0{t}") != "complete"


STEPS = 60  # the preemption and stopped-controller sweeps: long enough to interrupt at step >= 5


def _interruptible(tiny_model_dir: Path, quotes_jsonl: Path, results: Path) -> list[str]:
    """The overrides of the sweeps interrupted below (8-bit, no periodic checkpoints)."""
    return tiny_overrides(tiny_model_dir, quotes_jsonl, results, optim="paged_adamw_8bit",
                          **{"train.max_steps": STEPS, "train.checkpoint_every": 0, "train.eval_every": 10})


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trials 1 and 2 of the interrupted sweeps' protocol, run through without interruption by the
    local launcher (same seeds, one thread as in a SLURM job): the bits a resumed or redone run must have."""
    results = tmp_path_factory.mktemp("uninterrupted")
    assert run_cli(["-m", "study=ref", "trial=1,2", *_interruptible(tiny_model_dir, quotes_jsonl, results)]) == 0
    return results / "ref" / CELL8


def test_preempted_jobs_checkpoint_requeue_and_resume_bit_for_bit(cluster: LocalSlurm, tiny_model_dir: Path,
                                                                  quotes_jsonl: Path, tmp_path: Path,
                                                                  uninterrupted: Path) -> None:
    """Preempted mid-training, a job saves a checkpoint at the end of that step and is requeued;
    the requeued job resumes from it to the same adapter SHA-256, loss curve and perplexity as an
    uninterrupted run. Both ways at once, one per element of a 2-job array: trial 1 by submitit's
    preemption signals (SIGTERM, then its USR2 to the job's step; submitit's handler then requeues
    the job), trial 2 by ``scontrol requeue`` (SLURM requeues the job and sends it SIGTERM, as a
    preemption with PreemptMode=REQUEUE does)."""
    log = tmp_path / "sweep.log"
    proc = _launch(["-m", *FIT, "study=pre", "trial=1,2", *_interruptible(tiny_model_dir, quotes_jsonl, tmp_path)],
                   log)
    study = tmp_path / "pre"
    array = _wait_for(lambda: _array_job(study), "the array job", 120, proc, log)
    jobs = [f"{array}_0", f"{array}_1"]  # trial 1, trial 2
    for job in jobs:
        _wait_for(lambda job=job: f"step 5/{STEPS}" in _job_log(study, job), f"job {job} to reach step 5", 300,
                  proc, log)
    usr = SlurmJobEnvironment.USR_SIG  # USR2 in submitit 1.5; as submitit's own preemption test (Job._interrupt)
    for command in [*(["scancel", jobs[0], "--signal", sig] for sig in ("SIGTERM", usr)),
                    ["scontrol", "requeue", jobs[1]]]:
        sent = subprocess.run(command, capture_output=True, text=True, check=False)
        assert sent.returncode == 0, f"{sent.stderr} {_squeue(array)}\n{cluster.log_tail()}"
    def both_preempted() -> list[dict] | None:
        lines = [e for e in _ledger(study) if e["status"] == "preempted"]
        return lines if len(lines) == 2 else None

    preempted = _wait_for(both_preempted, "both preemptions", 180, proc, log)
    # SLURM may hold a requeued job for ~2 minutes (BeginTime); as the cluster's admin, start it now.
    # Where it is not held, the job may restart and even finish (and the sweep end) between two looks.
    deadline, restarted = time.monotonic() + 180, set()
    while proc.poll() is None and time.monotonic() < deadline and len(restarted) < 2:
        for job in set(jobs) - restarted:
            state, restarts = _job_state(job)
            if restarts >= 1 and state in ("RUNNING", "COMPLETING", "COMPLETED"):
                restarted.add(job)
            elif state == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True,
                               check=False)
        time.sleep(0.5)
    rc = proc.wait(timeout=300)
    out = log.read_text()
    assert rc == 0, out[-3000:]
    assert sorted(e["slurm_job"] for e in preempted) == jobs
    assert sorted(e["status"] for e in _ledger(study)) == ["complete", "complete", "preempted", "preempted"]
    assert "sweep finished: 2 runs (2 complete; 2 preemption(s) resumed)" in out
    for t, stop in ((1, next(e for e in preempted if e["slurm_job"] == jobs[0])),
                    (2, next(e for e in preempted if e["slurm_job"] == jobs[1]))):
        run, ref = study / CELL8 / f"trial-0{t}", uninterrupted / f"trial-0{t}"
        assert stop["run_dir"] == str(run) and 5 <= stop["step"] < STEPS
        s, r = artifacts.read_summary(run), artifacts.read_summary(ref)
        assert s["status"] == "complete" and s["resumed"]["from_step"] == stop["step"]
        assert s["resumed"]["checkpoint"] == f"checkpoint-{stop['step']}"
        assert s["adapter"]["sha256"] == r["adapter"]["sha256"]
        assert _curve(run) == _curve(ref)
        assert s["metrics"]["perplexity_token_weighted"] == r["metrics"]["perplexity_token_weighted"]


def _curve(run: Path) -> list[tuple[str, ...]]:
    """Loss-curve rows without the wall-clock column."""
    lines = (run / artifacts.LOSS_CURVE).read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "elapsed_s"]
    return [tuple(row.split(",")[i] for i in keep) for row in lines]


def test_preflight_refuses_what_no_node_can_run(cluster: LocalSlurm, tiny_model_dir: Path, quotes_jsonl: Path,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    too_big = cluster.memory_mb // 1024 + 8
    assert run_cli(["-m", *FIT, f"hydra.launcher.mem_gb={too_big}", "study=big", "trial=1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no SLURM node has cpus_per_task=1") and "mem_gb" in err[0]
    assert run_cli(["-m", *FIT, "device=cuda", "study=gpu", "trial=1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device=cuda but the SLURM jobs ask for no GPU")
    assert not (tmp_path / "big").exists() and not (tmp_path / "gpu").exists()  # nothing submitted


def _ledgers(study: Path) -> list[list[dict]]:
    """Each sweep's ledger, the oldest sweep's first (``_sweeps/<time>_<pid>``)."""
    return [[json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(study.glob("_sweeps/*/ledger.jsonl"), key=lambda f: f.parent.name)]


def _job_log(study: Path, job: str) -> str:
    """The stdout of SLURM jobs of the study's sweeps (submitit's ``<job>_<task>_log.out``)."""
    return "\n".join(p.read_text() for p in study.glob(f"_sweeps/*/.submitit/{job}/*_log.out"))


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid`` if it still runs."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _logged_at(line: str) -> float:
    """The time (epoch seconds) of a line of the launcher's log (``[YYYY-mm-dd HH:MM:SS,mmm][HYDRA] ...``)."""
    return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _freeze_the_controller_mid_sweep(cluster: LocalSlurm, command: list[str], study: Path, runs: list[Path],
                                     log: Path, steps: int, holders: list[claims.Holder]) -> tuple[int, str, float]:
    """Start the sweep, let both jobs train, freeze slurmctld, and meanwhile kill the job of the
    first run and freeze that of the second (their claims' holders go to ``holders`` at once).
    Returns the sweep's exit code, its output and when the launcher gave up after the freeze
    (seconds, from its log)."""
    proc = _launch(command, log)
    array = _wait_for(lambda: _array_job(study), "the array job", 300, proc, log)
    for i in (0, 1):
        _wait_for(lambda i=i: f"step 5/{steps}" in _job_log(study, f"{array}_{i}"), f"job _{i} to reach step 5", 300,
                  proc, log)
    dead, frozen = (claims.read_claim(run) for run in runs)
    assert dead is not None and frozen is not None
    holders += [dead, frozen]
    cluster.pause_controller()
    paused = time.time()
    os.kill(dead.pid, signal.SIGKILL)  # trial 1's job dies while nobody can tell the launcher
    os.kill(frozen.pid, signal.SIGSTOP)  # trial 2's lives on
    rc = proc.wait(timeout=600)  # its Python may take long to exit on a machine busy with other work
    out = log.read_text()
    gave_up = [_logged_at(line) - paused for line in out.splitlines() if "] error: slurm job" in line]
    return rc, out, max(gave_up, default=float("inf"))


def test_a_controller_that_stops_answering_ends_the_wait_and_a_rerun_takes_over(
        cluster: LocalSlurm, tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path, uninterrupted: Path) -> None:
    """slurmctld frozen mid-sweep (SIGSTOP: squeue and sacct time out): the launcher gives up on
    both jobs within hydra.launcher.unanswered_wait_s, one line each, ``lost`` in the ledger, exit 1.
    Meanwhile the job of trial 1 died (SIGKILL) and that of trial 2 lives on (frozen). With the
    controller back, the same command takes trial 1's claim over and redoes it (the adapter of an
    uninterrupted run) and leaves trial 2 to its own job, which then finishes it: each run once."""
    steps, bound = STEPS, 30
    command = ["-m", *FIT, f"hydra.launcher.unanswered_wait_s={bound}", "study=lost", "trial=1,2",
               *_interruptible(tiny_model_dir, quotes_jsonl, tmp_path)]
    study = tmp_path / "lost"
    runs = [study / CELL8 / f"trial-0{t}" for t in (1, 2)]
    holders: list[claims.Holder] = []
    try:
        rc, out, gave_up = _freeze_the_controller_mid_sweep(cluster, command, study, runs, tmp_path / "sweep.log",
                                                            steps, holders)
        dead, frozen = holders
        cluster.resume_controller()
        assert rc == 1, out[-3000:]
        # the last answer came at most one question interval before the freeze; no question
        # outlasts the bound by more than a second
        assert bound - slurm_wait.probe_interval(bound) - 1 <= gave_up <= bound + 5, (gave_up, out[-3000:])
        lines = [line.split("] error: ", 1)[1] for line in out.splitlines() if "] error: slurm job" in line]
        [array] = {line.split()[2].split("_")[0] for line in lines}
        assert [line.split(" (")[0] for line in lines] == [f"slurm job {array}_0", f"slurm job {array}_1"]
        assert all(f"s (bound hydra.launcher.unanswered_wait_s={bound}); recorded as lost, re-run the command to "
                   "take it over" in line for line in lines), lines
        assert " trial=1 " in lines[0] and " trial=2 " in lines[1] and "2 run(s) lost" in out
        assert [(e["status"], e["slurm_job"], e["error"]) for e in _ledgers(study)[0]] == [
            ("lost", f"{array}_0", lines[0]), ("lost", f"{array}_1", lines[1])]
        _rerun_takes_over(command, study, runs, tmp_path / "rerun.log", dead, frozen, cluster)
        # its job writes DONE, then its ledger line: wait for the line, not the marker
        _wait_for(lambda: any(e["run_dir"] == str(runs[1]) and e["status"] == "complete" for e in _ledgers(study)[0]),
                  "trial 2's own job to finish and say so in its ledger", 600)
    finally:
        cluster.resume_controller()
        for holder in holders[1:]:  # a failed test leaves no frozen job behind (it finishes its run)
            _signal(holder.pid, signal.SIGCONT)
    for run in runs:
        integrity.verify_manifest(run)
        s = artifacts.read_summary(run)
        assert s["status"] == "complete" and s["resumed"] is None and s["metrics"]["steps"] == steps
    ref = artifacts.read_summary(uninterrupted / "trial-01")  # local launcher, same seeds
    assert artifacts.read_summary(runs[0])["adapter"]["sha256"] == ref["adapter"]["sha256"]
    # each run finished once: trial 1 in the rerun, trial 2 in its first job (whose line is in the first ledger)
    by_run = [[[e["status"] for e in led if e["run_dir"] == str(run)] for led in _ledgers(study)] for run in runs]
    assert by_run == [[[], ["complete"]], [["complete"], ["running_elsewhere"]]]


def _rerun_takes_over(command: list[str], study: Path, runs: list[Path], log: Path, dead: claims.Holder,
                      frozen: claims.Holder, cluster: LocalSlurm) -> None:
    """The same command again, the controller back: the dead job's run is taken over and
    completed, the frozen (live) job's run is left to it; then that job may go on."""
    rerun = _launch(command, log)
    assert rerun.wait(timeout=1200) == 0, f"{log.read_text()[-3000:]}\n{cluster.log_tail()}"
    _signal(frozen.pid, signal.SIGCONT)
    jobs_said = _job_log(study, "*")  # the job that took the claim over says so in its log
    assert f"took over a stale claim of {dead.where}" in jobs_said, jobs_said[-3000:]
    assert f"pid {dead.pid} is no longer running on this host" in jobs_said
    second = _ledgers(study)[1]
    assert sorted((e["run_dir"], e["status"]) for e in second) == [
        (str(runs[0]), "complete"), (str(runs[1]), "running_elsewhere")]
    assert {e["status"]: e.get("took_over") or e.get("holder") for e in second} == {
        "complete": dead.where, "running_elsewhere": frozen.where}
