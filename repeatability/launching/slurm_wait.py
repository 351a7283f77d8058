"""Waiting for a SLURM sweep's jobs, and giving up on the ones SLURM stops answering about.

submitit's ``Job.results()`` waits while a job's state is PENDING, RUNNING or UNKNOWN, and a state
it cannot read (``sacct`` failing because the controller is down, hung or out of reach) stays the
last one it read, or UNKNOWN: that wait never ends. The launcher therefore waits here itself:

- every second it looks for each job's result file (submitit's ``paths.result_pickle``); a job
  that has one is done, and submitit's ``results()`` reads it;
- every ``probe_s`` (a tenth of the bound, between 2 and 60 s) it asks SLURM for the state of the
  jobs still waited for (allowed ``max(PROBE_TIMEOUT_S, probe_s)``, or what is left of the
  bound, at least 1 s, so the launcher gives up about a second after it): the controller
  (``squeue``), and for a job the controller no longer lists, accounting (``sacct``), whose word
  counts only when it says the job *ended* (with the controller gone, accounting keeps saying
  RUNNING, the last state it heard);
- a job SLURM says has ended gets :data:`RESULT_GRACE_S` more for its result file (a slow shared
  filesystem), then it is ``failed``;
- a job SLURM has not answered about for ``hydra.launcher.unanswered_wait_s`` (its bound, which
  is not a bound on run time: a job PENDING or RUNNING for days is answered about) is ``lost``:
  the launcher stops waiting for it. It may still be running; its run claim keeps a re-run from
  running it a second time (:mod:`repeatability.launching.claims`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

SETTING = "hydra.launcher.unanswered_wait_s"
LOST = "lost"  # the ledger status of a job the launcher stopped waiting for (it fails the sweep)
# states after which a job never runs again; PREEMPTED is not one (submitit requeues it), as in submitit's is_done
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "TIMEOUT"})
RESULT_GRACE_S = 15.0  # how long submitit's own results() waits for a result file once a job is over
POLL_S = 1.0  # result files, as often as submitit's Job.wait looks
PROBE_TIMEOUT_S = 10.0  # the least time one squeue or sacct gets (SLURM's own MessageTimeout default)

Probe = Callable[[Collection[str], float], dict[str, str]]


def probe_interval(bound_s: float) -> float:
    """Seconds between two questions to SLURM: several within the bound, at most one a minute."""
    return min(60.0, max(2.0, bound_s / 10))


def _ask(command: list[str], timeout_s: float) -> str:
    """The command's output, or "" when it fails or takes longer than ``timeout_s`` (then it is
    killed with its children: the sacct stand-in's squeue too)."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
    except OSError:  # not installed here
        return ""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return ""
    return out if proc.returncode == 0 else ""


def _parse(text: str) -> dict[str, str]:
    """``JOBID|STATE[|...]`` lines → state by job id, array ranges (``12_[0-3%2]``) expanded; header
    lines, job steps (``12_0.batch``) and blank states are left out."""
    from submitit.slurm.slurm import read_job_id

    states: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("|")
        job, state = fields[0].strip(), (fields[1].split() or [""])[0] if len(fields) > 1 else ""
        if not job[:1].isdigit() or "." in job or not state:
            continue
        for main, *index in read_job_id(job):
            ids = [main] if not index else [f"{main}_{i}" for i in range(int(index[0]), int(index[-1]) + 1)]
            states.update(dict.fromkeys(ids, state.upper()))
    return states


def slurm_states(job_ids: Collection[str], timeout_s: float) -> dict[str, str]:
    """The state SLURM reports, within ``timeout_s`` for both questions, for each of ``job_ids``
    it answers about (see the module's doc); a job left out got no answer."""
    deadline = time.monotonic() + timeout_s
    arrays = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    known = _parse(_ask(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", arrays], timeout_s))
    if any(j not in known for j in job_ids) and deadline - time.monotonic() > 0:
        accounted = _parse(_ask(["sacct", "-X", "-P", "-o", "JobID,State", "-j", arrays], deadline - time.monotonic()))
        known |= {j: s for j, s in accounted.items() if j not in known and s in ENDED}
    return {j: known[j] for j in job_ids if j in known}


@dataclass
class Outcome:
    """How the wait for one job ended: ``status`` None with its ``result``, or ``failed`` / ``lost``
    with the one ``line`` that says why."""

    status: str | None
    result: Any = None
    line: str = ""


@dataclass
class _Watched:
    job: Any  # a submitit Job: job_id, paths.result_pickle, results()
    name: str  # its overrides, for the lines
    answered: float  # when SLURM last reported its state (clock seconds)
    state: str = "UNKNOWN"
    ended: float | None = None  # when SLURM first said it ended


def _collect(w: _Watched) -> Outcome:
    """The job's result, read by submitit; a job whose function raised outside the run is failed."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return Outcome(None, w.job.results()[0])
    except (UncompletedJobError, FailedJobError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Outcome("failed", line=f"slurm job {w.job.job_id} ({w.name}) ended {w.state} without a result: "
                                      f"{first[:300]}")


def _verdict(w: _Watched, now: float, bound_s: float) -> Outcome | None:
    """``failed`` for an ended job whose result file never came, ``lost`` past the bound, else None."""
    if w.ended is not None and now - w.ended >= RESULT_GRACE_S:
        return Outcome("failed", line=f"slurm job {w.job.job_id} ({w.name}) ended {w.state} without a result: "
                                      f"no {w.job.paths.result_pickle.name} after {RESULT_GRACE_S:g} s; "
                                      f"see {w.job.paths.stderr}")
    if now - w.answered > bound_s:
        return Outcome(LOST, line=f"slurm job {w.job.job_id} ({w.name}): no answer from SLURM for "
                                    f"{now - w.answered:.0f} s (bound {SETTING}={bound_s:g}); recorded as lost, "
                                    "re-run the command to take it over")
    return None


def wait(jobs: Sequence[Any], names: Sequence[str], bound_s: float, probe: Probe = slurm_states,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[Outcome]:
    """Wait for every job (in order of ``jobs``; ``names`` are their overrides) until each has a
    result, has ended without one, or SLURM has not answered about it for ``bound_s`` seconds."""
    if bound_s <= 0:
        raise ValueError(f"{SETTING} must be > 0, not {bound_s:g}")
    start = clock()
    watched = [_Watched(job, name, start) for job, name in zip(jobs, names, strict=True)]
    outcomes: dict[int, Outcome] = {}
    every = probe_interval(bound_s)
    next_probe = start + min(every, 2.0)  # sbatch has just answered for them
    while len(outcomes) < len(watched):
        for i, w in enumerate(watched):
            if i not in outcomes and w.job.paths.result_pickle.exists():
                outcomes[i] = _collect(w)
        waiting = [(i, w) for i, w in enumerate(watched) if i not in outcomes]
        if waiting and clock() >= next_probe:
            # no question outlasts the bound of the job SLURM has been silent about longest
            left = min(w.answered for _, w in waiting) + bound_s - clock()
            states = probe([w.job.job_id for _, w in waiting], min(max(PROBE_TIMEOUT_S, every), max(1.0, left)))
            next_probe = clock() + every
            now = clock()
            for _, w in waiting:
                if w.job.job_id in states:
                    w.answered, w.state = now, states[w.job.job_id]
                    w.ended = (now if w.ended is None else w.ended) if w.state in ENDED else None
        now = clock()
        for i, w in waiting:
            verdict = None if w.job.paths.result_pickle.exists() else _verdict(w, now, bound_s)
            if verdict is not None:
                outcomes[i] = verdict
        if len(outcomes) < len(watched):
            sleep(POLL_S)
    return [outcomes[i] for i in range(len(watched))]
