"""SLURM through submitit: the sweep's launch loop, and a check of the requested resources
against the cluster before anything is submitted.

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
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from repeatability.config.errors import ConfigError

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


# --------------------------------------------------------------------------- preflight


def _nodes(partition: str | None) -> list[dict[str, Any]]:
    """``sinfo``: every node's CPUs, memory (MB) and GPUs, for one partition or all."""
    cmd = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise ConfigError(f"sinfo failed ({out.stderr.strip() or out.returncode}); is this a SLURM login node?")
    nodes = []
    for line in out.stdout.splitlines():
        name, cpus, mem, gres, part = line.split("|")
        gpus = sum(int(g.split(":")[-1].split("(")[0]) for g in gres.split(",") if g.startswith("gpu")
                   and g.split(":")[-1].split("(")[0].isdigit())
        nodes.append({"name": name, "cpus": int(cpus.rstrip("+")), "mem_mb": int(mem.rstrip("+")), "gpus": gpus,
                      "partition": part.rstrip("*")})
    return nodes


def check_resources(launcher_cfg: DictConfig, needs_gpu: bool) -> None:
    """Refuse, in one line, a request no node of the partition can satisfy (SLURM would leave
    such a job pending forever, or reject it only at submission), and a CUDA run without GPUs."""
    lc = OmegaConf.to_container(launcher_cfg, resolve=False)  # folder/name interpolate Hydra's runtime
    assert isinstance(lc, dict)
    gres = str(lc.get("gres") or "")
    gpus = int(lc.get("gpus_per_node") or lc.get("gpus_per_task") or
               (gres.split(":")[-1] if gres.startswith("gpu") and gres.split(":")[-1].isdigit() else 0))
    wait_s = lc.get("unanswered_wait_s", 1)  # absent in submitit's own launcher (hydra/launcher=submitit_slurm)
    if not isinstance(wait_s, int | float) or wait_s <= 0:
        raise ConfigError(f"hydra.launcher.unanswered_wait_s={wait_s} must be a positive number of seconds (how "
                          "long to keep waiting for a job SLURM does not answer about)")
    if needs_gpu and not gpus:
        raise ConfigError("device=cuda but the SLURM jobs ask for no GPU; set hydra.launcher.gpus_per_node=1 "
                          "(or device=auto to run on the nodes' CPUs)")
    if shutil.which("sinfo") is None:
        log.warning("sinfo not found: the SLURM resources asked for (cpus_per_task=%s, mem_gb=%s, gpus_per_node=%s) "
                    "were not checked against the cluster", lc.get("cpus_per_task"), lc.get("mem_gb"), gpus)
        return
    partition = lc.get("partition")
    nodes = _nodes(partition)
    if not nodes:
        raise ConfigError(f"SLURM partition {partition!r} has no nodes; set hydra.launcher.partition=<a partition "
                          "sinfo lists>")
    cpus = int(lc.get("cpus_per_task") or 1) * int(lc.get("tasks_per_node") or 1)
    mem_mb = float(lc.get("mem_gb") or 0) * 1024
    fits = [n for n in nodes if n["cpus"] >= cpus and n["mem_mb"] >= mem_mb and n["gpus"] >= int(gpus)]
    if not fits:
        biggest = max(nodes, key=lambda n: (n["gpus"], n["cpus"], n["mem_mb"]))
        raise ConfigError(
            f"no SLURM node{' in partition ' + partition if partition else ''} has cpus_per_task={cpus}, "
            f"mem_gb={lc.get('mem_gb')}, gpus_per_node={gpus} (largest: {biggest['name']} with {biggest['cpus']} CPUs, "
            f"{biggest['mem_mb'] / 1024:.1f} GB, {biggest['gpus']} GPUs); lower hydra.launcher.cpus_per_task / "
            "mem_gb / gpus_per_node or choose hydra.launcher.partition")
