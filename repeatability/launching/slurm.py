"""SLURM through submitit: the sweep's launch loop (the check of the requested resources against
the cluster before anything is submitted: :mod:`repeatability.launching.slurm_preflight`).

``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) is submitit's SLURM launcher with one
change (``hydra_plugins.repeatability_launcher``): a job that ends without a result (cancelled,
killed for memory or time, a failed node) becomes a ``failed`` line in the sweep ledger, the other
jobs are still waited for, and the sweep ends non-zero listing it, instead of stopping at the
first such job with a traceback; and the wait for a job ends after ``unanswered_wait_s`` without
an answer from SLURM about it (controller down or unreachable), as a ``lost`` line
(:mod:`repeatability.launching.slurm_wait`), instead of never.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

EXECUTOR = "slurm"  # submitit's cluster name for this launcher


def _executor(launcher: Any) -> Any:
    """A submitit executor with the launcher's parameters (as the stock launcher builds it)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(launcher.params)
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster=EXECUTOR,
                                     **{f"{EXECUTOR}_max_num_timeout": params.pop("max_num_timeout", 0)})
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{EXECUTOR}_{k}": v for k, v in params.items()})
    return executor


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Submit one array job for the sweep, wait for every element (:func:`slurm_wait.wait`), and
    record in the ledger the ones that ended without a result (status ``failed``) and the ones
    SLURM stopped answering about for ``launcher.unanswered_wait_s`` (status ``lost``) rather
    than raising or waiting forever."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides

    from repeatability.launching import slurm_wait, sweep

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    executor = _executor(launcher)
    log.info("submitit 'slurm' sweep output dir: %s", sweep_dir)
    params, names = [], []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        names.append(" ".join(filter_overrides(overrides)))
        log.info("\t#%d : %s", idx, names[-1])
        params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*params))
    log.info("submitted array job %s (%d runs); waiting for them (giving up on a job SLURM does not answer "
             "about for %g s)", jobs[0].job_id.split("_")[0], len(jobs), launcher.unanswered_wait_s)
    returns = []
    for job, overrides, outcome in zip(jobs, job_overrides, slurm_wait.wait(jobs, names, launcher.unanswered_wait_s)):
        if outcome.status is None:
            returns.append(outcome.result)
            continue
        log.error("error: %s", outcome.line)
        sweep.append_ledger({"run_dir": None, "status": outcome.status, "error": outcome.line, "slurm_job": job.job_id},
                            sweep_dir / sweep.LEDGER)
        # recorded, like an exception inside a run; SweepReport ends non-zero listing it
        returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=outcome.status))
    return returns
