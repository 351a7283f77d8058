"""``hydra/launcher=slurm``: submitit's SLURM launcher, but a job that ends without a result
(cancelled, killed, failed node) is recorded as a failed run instead of aborting the sweep
(see :mod:`repeatability.launching.slurm`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:  # the launchers extra (pip install -e '.[launchers]'); without it Hydra lists no such launcher
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pragma: no cover - depends on the install
    SlurmLauncher = None

if SlurmLauncher is not None:

    class RepeatabilitySlurmLauncher(SlurmLauncher):  # type: ignore[misc, valid-type]
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
            from repeatability.launching import slurm

            return slurm.launch(self, job_overrides, initial_job_idx)
