"""SLURM through submitit: the sweep's launch loop, and a check of the requested resources
against the cluster before anything is submitted.

``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) is submitit's SLURM launcher with one
change (``hydra_plugins.repeatability_launcher``): a job that ends without a result (cancelled,
killed for memory or time, a failed node) becomes a ``failed`` line in the sweep ledger, the other
jobs are still waited for, and the sweep ends non-zero listing it, instead of stopping at the
first such job with a traceback.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from repeatability.records.errors import ConfigError

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
    """Submit one array job for the sweep, wait for every element, and record the ones that
    ended without a result in the ledger (status ``failed``) rather than raising."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from repeatability.launching import sweep

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    executor = _executor(launcher)
    log.info("submitit 'slurm' sweep output dir: %s", sweep_dir)
    params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*params))
    log.info("submitted array job %s (%d runs); waiting for them", jobs[0].job_id.split("_")[0], len(jobs))
    returns = []
    for job, overrides in zip(jobs, job_overrides):
        try:
            returns.append(job.results()[0])
        except (UncompletedJobError, FailedJobError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            line = (f"slurm job {job.job_id} ({' '.join(filter_overrides(overrides))}) ended {job.state} "
                    f"without a result: {first[:300]}")
            log.error("%s", line)
            sweep.append_ledger({"run_dir": None, "status": "failed", "error": line, "slurm_job": job.job_id},
                                 sweep_dir / sweep.LEDGER)
            # the job's failure is recorded, like an exception inside a run; SweepReport ends non-zero
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value="failed"))
    return returns


# --------------------------------------------------------------------------- preflight


def _nodes(partition: str | None) -> list[dict[str, Any]]:
    """``sinfo``: every node's CPUs, memory (MB) and GPUs, for one partition or all."""
    cmd = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
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
