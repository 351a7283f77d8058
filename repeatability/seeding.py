"""Seeds for every source of randomness, and the determinism flags, set before the model exists.

Sources are seeded separately so an experiment can vary one at a time:

- ``lora_init``: the global torch RNG when ``get_peft_model`` draws the LoRA A matrices;
- ``data_order``: the training sampler's generator (``TrainingArguments.data_seed``);
- ``dropout``: the global RNG once training starts (``TrainingArguments.seed``);
- ``generation``: the RNG reset before each sampled generation.

The split seed is not here: it is the same for every trial and optimizer (``determinism.split_seed``).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repeatability import launchers
from repeatability.config import DeterminismConfig

SOURCES = ("lora_init", "data_order", "dropout", "generation")

# What each policy does with each source when the per-source knob is left null.
# "paper" mirrors a script like the paper's: the Trainer seed (data order, dropout) is the
# Trainer default 42 in every trial, and LoRA A matrices are drawn from whatever state the global
# RNG is in (unseeded); we draw that seed from OS entropy and record it so the run can be replayed.
_POLICY: dict[str, dict[str, str]] = {
    "per_trial": {s: "trial" for s in SOURCES},
    "fixed": {s: "fixed" for s in SOURCES},
    "paper": {"lora_init": "entropy", "data_order": "hf42", "dropout": "hf42", "generation": "fixed"},
}


@dataclass(frozen=True)
class Seeds:
    """The seed of each source for one run, and how it was chosen."""

    lora_init: int
    data_order: int
    dropout: int
    generation: int
    split: int
    policy: str
    rules: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _derive(base: int, source: str, trial: int) -> int:
    """A stable 31-bit seed per (base, source, trial): distinct streams for distinct sources."""
    digest = hashlib.sha256(f"{base}:{source}:{trial}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_seeds(cfg: DeterminismConfig, trial: int) -> Seeds:
    """Apply the seed policy and per-source overrides for one trial."""
    rules = dict(_POLICY[cfg.seed_policy])
    for source in SOURCES:
        override = getattr(cfg, source)
        if override is not None:
            rules[source] = override
    values: dict[str, int] = {}
    for source, rule in rules.items():
        if rule == "trial":
            values[source] = _derive(cfg.base_seed, source, trial)
        elif rule == "fixed":
            values[source] = _derive(cfg.base_seed, source, 0)
        elif rule == "hf42":
            values[source] = 42
        else:  # entropy: unseeded in the paper's sense, but recorded here
            values[source] = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return Seeds(split=cfg.split_seed, policy=cfg.seed_policy, rules=rules, **values)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def thread_budget(requested: int | None, results_dir: str | Path | None = None) -> dict[str, Any]:
    """torch threads for this job so that jobs x threads <= the cores it was given.

    Jobs = this sweep's jobs on this host (:func:`repeatability.launchers.current`) plus the
    live runs of other launchers on this host under ``results_dir``
    (:func:`repeatability.launchers.other_live_jobs`). Two processes on 2 cores that each use
    every core's thread ran a 6-step run ~8x slower than one alone; ``determinism.threads`` set
    by the user wins over this budget. Inside a SLURM job the allocation is the job's own.
    """
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm:  # a SLURM job owns exactly its cpus_per_task: one job per allocation
        cores, jobs, source = int(slurm), 1, f"SLURM_CPUS_PER_TASK={slurm}"
    else:
        launcher = launchers.current()
        others = launchers.other_live_jobs(results_dir, launchers.launcher_pid(launcher)) if results_dir else 0
        cores, jobs = launchers.cores(), launcher.parallel_jobs + others
        source = launcher.source + (f" + {others} live run(s) of other launchers on this host" if others else "")
    if requested:
        return {"threads": requested, "cores": cores, "parallel_jobs": jobs, "source": "determinism.threads"}
    return {"threads": max(1, cores // max(jobs, 1)), "cores": cores, "parallel_jobs": jobs, "source": source}


def apply_determinism(mode: str, threads: int | None) -> dict[str, Any]:
    """Set the determinism flags for ``mode`` and return the flags actually in force.

    ``strict`` needs ``CUBLAS_WORKSPACE_CONFIG`` before CUDA starts; it is set here and the
    returned record says whether CUDA was already initialised (then it may be too late).
    """
    if threads:
        torch.set_num_threads(threads)
    cuda_started = torch.cuda.is_available() and torch.cuda.is_initialized()
    if mode == "strict":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif mode == "default":
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:  # off: whatever is fastest
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    return read_determinism_flags(mode, cuda_started_before=cuda_started)


def read_determinism_flags(mode: str, cuda_started_before: bool = False) -> dict[str, Any]:
    """Read back the flags in force (not what was asked for)."""
    return {
        "mode": mode,
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "FLASH_ATTENTION_DETERMINISTIC": os.environ.get("FLASH_ATTENTION_DETERMINISTIC"),
        "cuda_initialised_before_flags": cuda_started_before,
        "torch_num_threads": torch.get_num_threads(),
    }
