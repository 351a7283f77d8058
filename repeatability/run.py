"""Entry point: ``python -m repeatability.run -m trial=1,2,3 optim=paged_adamw_8bit,paged_adamw_32bit``.

Checks every job of the command line first (one line per problem, before any training), then
hands over to Hydra, which launches one :func:`repeatability.sweep.run_one` per job.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from repeatability import preflight
from repeatability.config import register_configs
from repeatability.errors import ConfigError
from repeatability.sweep import run_one

register_configs()


@hydra.main(version_base="1.3", config_path=str(preflight.CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> str:
    return run_one(cfg)


def main() -> None:
    """Preflight, then Hydra."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        preflight.check_argv(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv.append(preflight.SEARCHPATH_OVERRIDE)
    _hydra_main()


if __name__ == "__main__":
    main()
