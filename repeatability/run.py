"""Entry point: ``python -m repeatability.run -m trial=1,2,3 optim=paged_adamw_8bit,paged_adamw_32bit``.

Checks every job of the command line first (one line per problem, before any training), then
hands over to Hydra, which launches one :func:`repeatability.launching.sweep.run_one` per job.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import hydra
from omegaconf import DictConfig

from repeatability.config.errors import ConfigError
from repeatability.config.run import register_configs
from repeatability.launching import preflight, sweep

register_configs()


@hydra.main(version_base="1.3", config_path=str(preflight.CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> str:
    return sweep.run_one(cfg)


def main() -> None:
    """Preflight, then Hydra."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    # library notices (and the harmless peft FutureWarning) are handled per job: sweep.run_one
    try:
        jobs = preflight.check_argv(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if jobs is not None:  # for progress lines "run k/n ... elapsed" (inherited by launcher workers)
        os.environ[sweep.TOTAL_ENV] = str(len(jobs))
        os.environ[sweep.START_ENV] = str(time.time())
        if any(job.determinism.mode == "strict" for job in jobs):
            # cuBLAS reads this when its first handle is made: set it before any job touches CUDA
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sys.argv.append(preflight.SEARCHPATH_OVERRIDE)
    _hydra_main()


if __name__ == "__main__":
    main()
