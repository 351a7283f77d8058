"""Preflight of a SLURM sweep: the requested resources against the cluster's nodes (``sinfo``),
before anything is submitted. The launcher's classification points here
(:attr:`repeatability.launching.launchers.Launcher.check_resources`); the launch loop is
:mod:`repeatability.launching.slurm`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

from omegaconf import DictConfig, OmegaConf

from repeatability.config.errors import ConfigError

log = logging.getLogger(__name__)


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
