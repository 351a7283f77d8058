"""The ``slurm`` tier: sweeps through the project's own ``hydra/launcher=slurm`` on a real
single-node SLURM cluster started on this machine (tests/slurm_cluster.py).

Skips only where the tier cannot run (not root, or the Debian packages missing: ``make
slurm-packages`` installs them), saying so; a cluster that is installed but does not start fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmJobEnvironment

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
    except Exception as exc:
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
    out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i|%T", "-j", job], capture_output=True, text=True)
    return [tuple(line.split("|")) for line in out.stdout.split()]  # type: ignore[misc]


def _job_state(job: str) -> tuple[str, int]:
    """The job's state and how many times SLURM has restarted it (``scontrol show job``)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
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


@pytest.mark.parametrize("how", ["submitit", "scontrol_requeue"])
def test_preempted_job_checkpoints_requeues_and_resumes_bit_for_bit(cluster: LocalSlurm, tiny_model_dir: Path,
                                                                   quotes_jsonl: Path, tmp_path: Path,
                                                                   how: str) -> None:
    """Preempted mid-training, the job saves a checkpoint at the end of that step and is requeued;
    the requeued job resumes from it to the same adapter SHA-256, loss curve and perplexity as an
    uninterrupted run. ``submitit``: its preemption signals (SIGTERM, then its USR2 to the job's step;
    submitit's handler then requeues the job). ``scontrol_requeue``: SLURM requeues the job and
    sends it SIGTERM, as a preemption with PreemptMode=REQUEUE does."""
    steps = 60
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, optim="paged_adamw_8bit",
                          **{"train.max_steps": steps, "train.checkpoint_every": 0, "train.eval_every": 10})
    log = tmp_path / "sweep.log"
    proc = _launch(["-m", *FIT, "study=pre", "trial=1", *args], log)
    study, cell = tmp_path / "pre", CELL8
    array = _wait_for(lambda: _array_job(study), "the array job", 120, proc, log)
    # submitit submits a sweep of one run as a plain job (id "N", not "N_0"); its log is N_0_log.out
    [(job, _)] = _wait_for(lambda: _squeue(array), "the job in squeue", 60, proc, log)
    job_log = lambda: "\n".join(p.read_text() for p in study.glob("_sweeps/*/.submitit/*/*_0_log.out"))  # noqa: E731
    _wait_for(lambda: f"step 5/{steps}" in job_log(), "training to reach step 5", 180, proc, log)
    # submitit: as its own preemption test (Job._interrupt) sends them
    usr = SlurmJobEnvironment.USR_SIG  # USR2 in submitit 1.5
    commands = ([["scancel", job, "--signal", sig] for sig in ("SIGTERM", usr)] if how == "submitit"
                else [["scontrol", "requeue", job]])
    for command in commands:
        sent = subprocess.run(command, capture_output=True, text=True)
        assert sent.returncode == 0, f"{sent.stderr} {_squeue(array)}\n{job_log()[-2000:]}\n{cluster.log_tail()}"
    preempted = _wait_for(lambda: [e for e in _ledger(study) if e["status"] == "preempted"], "the preemption", 120,
                          proc, log)
    # SLURM may hold a requeued job for ~2 minutes (BeginTime); as the cluster's admin, start it now.
    # Where it is not held, the job may restart and even finish (and the sweep end) between two looks.
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        state, restarts = _job_state(job)
        if restarts >= 1 and state in ("RUNNING", "COMPLETING", "COMPLETED"):
            break
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(0.5)
    rc = proc.wait(timeout=300)
    assert rc == 0, log.read_text()[-3000:]
    [stop] = preempted
    assert 5 <= stop["step"] < steps and stop["slurm_job"] == array
    run = study / cell / "trial-01"
    s = artifacts.read_summary(run)
    assert s["status"] == "complete" and s["resumed"]["from_step"] == stop["step"]
    assert s["resumed"]["checkpoint"] == f"checkpoint-{stop['step']}"
    assert [e["status"] for e in _ledger(study)] == ["preempted", "complete"]
    assert "sweep finished: 1 runs (1 complete; 1 preemption(s) resumed)" in log.read_text()
    # the uninterrupted reference, here with the local launcher and the same seeds
    assert run_cli(["study=ref", "trial=1", *args]) == 0
    ref = tmp_path / "ref" / cell / "trial-01"
    r = artifacts.read_summary(ref)
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
