"""Determinism flags and the thread budget of one run (seeds: :mod:`repeatability.trial.seeding`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

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


def apply_determinism(mode: str, threads: int | None) -> dict[str, Any]:
    """Set the determinism flags for ``mode`` and return the flags actually in force.

    ``strict`` needs ``CUBLAS_WORKSPACE_CONFIG`` before CUDA starts; it is set here and the
    returned record says whether CUDA was already initialised (then it may be too late).
    """
    if threads:
        torch.set_num_threads(threads)
    cuda_started = torch.cuda.is_available() and torch.cuda.is_initialized()
    if mode == "strict":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif mode == "default":
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:  # off: whatever is fastest
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    return read_determinism_flags(mode, cuda_started_before=cuda_started)


def read_determinism_flags(mode: str, cuda_started_before: bool = False) -> dict[str, Any]:
    """Read back the flags in force (not what was asked for)."""
    return {
        "mode": mode,
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "FLASH_ATTENTION_DETERMINISTIC": os.environ.get("FLASH_ATTENTION_DETERMINISTIC"),
        "cuda_initialised_before_flags": cuda_started_before,
        "torch_num_threads": torch.get_num_threads(),
    }
