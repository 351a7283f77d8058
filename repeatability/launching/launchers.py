"""The Hydra launcher in force, classified once: what kind it is, how many of the sweep's jobs
share this host's cores, and whether jobs run elsewhere. The thread budget
(:func:`repeatability.launching.threads.thread_budget`), preflight and the run claims ask here;
nothing else looks at a launcher's ``_target_``.

A launcher is known by the end of its ``_target_`` (:data:`KNOWN`). Adding one = one entry in
:data:`KNOWN` (how to read its config) + its YAML under ``conf/hydra/launcher/``; a remote one also
brings its module with the preflight check of its cluster (as :mod:`.slurm_preflight` does,
:attr:`Launcher.check_resources`), so a new remote launcher touches 3 files. A launcher not
listed is classified ``unknown`` and treated as if every job could run at once on this host
(one thread each): slower than needed, never oversubscribed.

The budget also counts the other launchers running on this host: each live claim under the same
results folder whose process runs here and belongs to another launcher is one more job on these
cores (:func:`repeatability.launching.claims.other_live_jobs`; a claim records its launcher's
:func:`launcher_pid`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from repeatability.launching import slurm_preflight


def cores() -> int:
    """Cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Launcher:
    """What a launcher means for the jobs it starts.

    ``parallel_jobs``: jobs of one sweep at once on *this* host (1 when sequential or remote);
    ``remote``: jobs run on other machines (preflight checks the cluster, not this host);
    ``check_resources(launcher_cfg, needs_gpu)``: a remote launcher's preflight of its cluster, which
    raises :class:`~repeatability.records.errors.ConfigError` for a request no node can run.
    """

    kind: str
    target: str
    parallel_jobs: int
    remote: bool
    source: str  # the budget's reason in words, e.g. "joblib n_jobs=2"
    check_resources: Callable[[Any, bool], None] | None = None


def _basic(target: str, cfg: Mapping[str, Any]) -> Launcher:
    return Launcher("basic", target, 1, False, "sequential launcher")


def _joblib(target: str, cfg: Mapping[str, Any]) -> Launcher:
    n_jobs = int(cfg.get("n_jobs") or 1)
    return Launcher("joblib", target, cores() if n_jobs < 0 else n_jobs, False, f"joblib n_jobs={n_jobs}")


def _slurm(target: str, cfg: Mapping[str, Any]) -> Launcher:
    return Launcher("slurm", target, 1, True, f"SLURM cpus_per_task={cfg.get('cpus_per_task')}",
                    slurm_preflight.check_resources)


# ``_target_`` suffix → how to read that launcher's config
KNOWN: dict[str, Callable[[str, Mapping[str, Any]], Launcher]] = {
    "basic_launcher.BasicLauncher": _basic,
    "joblib_launcher.JoblibLauncher": _joblib,
    "submitit_launcher.SlurmLauncher": _slurm,
    "slurm_launcher.RepeatabilitySlurmLauncher": _slurm,
}


def classify(cfg: Mapping[str, Any] | None) -> Launcher:
    """The launcher of ``hydra.launcher`` (``None``: no Hydra sweep, one process)."""
    if cfg is None:
        return Launcher("none", "", 1, False, "one process")
    target = str(cfg.get("_target_") or "")
    for suffix, read in KNOWN.items():
        if target.endswith(suffix):
            return read(target, cfg)
    return Launcher("unknown", target, cores(), False, f"unknown launcher {target or '(no _target_)'}: "
                    "every job assumed to run at once on this host")


def current() -> Launcher:
    """The launcher of the Hydra job this process runs in (``none`` outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return classify(HydraConfig.get().launcher)
    except (ValueError, ImportError):
        return classify(None)


def launcher_pid(launcher: Launcher | None = None) -> int:
    """The pid that identifies this process's launcher: the parent of a joblib worker, else
    this process (the basic launcher runs its jobs in its own process)."""
    return os.getppid() if (launcher or current()).kind == "joblib" else os.getpid()
