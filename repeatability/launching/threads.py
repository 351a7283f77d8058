"""The thread budget of one run: how many torch threads it may use so that the jobs sharing this
host's cores do not oversubscribe them. The launcher knows how many jobs run at once, so the budget is
computed here and handed to the trial (:func:`repeatability.trial.pipeline.execute`), which applies it
and records it as the summary's ``determinism.thread_budget``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from repeatability.launching import claims, launchers


def thread_budget(requested: int | None, results_dir: str | Path | None = None) -> dict[str, Any]:
    """torch threads for this job so that jobs x threads <= the cores it was given.

    Jobs = this sweep's jobs on this host (:func:`repeatability.launching.launchers.current`) plus the
    live runs of other launchers on this host under ``results_dir``
    (:func:`repeatability.launching.claims.other_live_jobs`). Two processes on 2 cores that each use
    every core's thread ran a 6-step run ~8x slower than one alone; ``determinism.threads`` set
    by the user wins over this budget. Inside a SLURM job the allocation is the job's own.
    """
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm:  # a SLURM job owns exactly its cpus_per_task: one job per allocation
        cores, jobs, source = int(slurm), 1, f"SLURM_CPUS_PER_TASK={slurm}"
    else:
        launcher = launchers.current()
        others = claims.other_live_jobs(results_dir, launchers.launcher_pid(launcher)) if results_dir else 0
        cores, jobs = launchers.cores(), launcher.parallel_jobs + others
        source = launcher.source + (f" + {others} live run(s) of other launchers on this host" if others else "")
    if requested:
        return {"threads": requested, "cores": cores, "parallel_jobs": jobs, "source": "determinism.threads"}
    return {"threads": max(1, cores // max(jobs, 1)), "cores": cores, "parallel_jobs": jobs, "source": source}
