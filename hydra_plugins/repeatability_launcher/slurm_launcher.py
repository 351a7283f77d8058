"""``hydra/launcher=slurm``: submitit's SLURM launcher, but a job that ends without a result
(cancelled, killed, failed node) is recorded as a failed run instead of aborting the sweep, and a
job SLURM stops answering about is recorded as lost after ``unanswered_wait_s`` instead of being
waited for forever (see :mod:`repeatability.launching.slurm`).

Its config, ``repeatability_slurm`` in the ``hydra/launcher`` group, is submitit's
``SlurmQueueConf`` plus ``unanswered_wait_s``: typed, so a misspelt key or a value that is not a
number fails when the config is composed (``conf/hydra/launcher/slurm.yaml`` builds on it).
"""

# no ``from __future__ import annotations``: Hydra's plugin scan runs this module without putting
# it in sys.modules, where dataclasses must look up string annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

try:  # the launchers extra (pip install -e '.[launchers]'); without it Hydra lists no such launcher
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pragma: no cover - depends on the install
    SlurmLauncher = None

if SlurmLauncher is not None:

    @dataclass
    class RepeatabilitySlurmConf(SlurmQueueConf):  # type: ignore[misc, valid-type]
        _target_: str = "hydra_plugins.repeatability_launcher.slurm_launcher.RepeatabilitySlurmLauncher"
        # seconds the launcher keeps waiting for a job while SLURM does not answer about it (squeue
        # fails or does not list it); then the job is recorded as lost. Not a bound on run time.
        # Its value: conf/hydra/launcher/slurm.yaml
        unanswered_wait_s: float = MISSING

    ConfigStore.instance().store(group="hydra/launcher", name="repeatability_slurm", node=RepeatabilitySlurmConf,
                                 provider="repeatability")

    class RepeatabilitySlurmLauncher(SlurmLauncher):  # type: ignore[misc, valid-type]
        def __init__(self, unanswered_wait_s: float, **params: Any) -> None:
            super().__init__(**params)  # submitit's parameters only: they all go to its executor
            self.unanswered_wait_s = float(unanswered_wait_s)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
            from repeatability.launching import slurm

            return slurm.launch(self, job_overrides, initial_job_idx)
