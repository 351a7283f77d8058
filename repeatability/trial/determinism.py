"""Determinism flags of one run and its torch threads (seeds: :mod:`repeatability.trial.seeding`; the thread
budget is the launcher's: :func:`repeatability.launching.threads.thread_budget`)."""

from __future__ import annotations

import os
from typing import Any

import torch


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
