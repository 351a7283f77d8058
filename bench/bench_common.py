"""What bench/bench.py and its parts (bench_trace.py) share: the study's config from Hydra overrides
and a fresh model with LoRA attached. Its own module, so that no part imports bench.py back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def config(overrides: list[str]) -> Any:
    """The checked run config of the default study with ``overrides``."""
    from repeatability.config.run import to_run_config
    from repeatability.launching import preflight

    return to_run_config(preflight.compose_jobs(overrides, multirun=False)[0])


def fresh_model(cfg: Any, path: str) -> Any:
    """The NF4 base on CPU with LoRA drawn from seed 1234: the same starting point for every arm."""
    import torch

    from repeatability.trial import modelling
    from repeatability.trial.seeding import seed_everything

    base = modelling.load_base(path, cfg.quant, "cpu", torch.float32)
    seed_everything(1234)
    return modelling.add_lora(base, cfg.model, cfg.lora, cfg.quant.load_in_4bit, False)
