"""A run's adapter files: saving PEFT's adapter atomically, its weights' SHA-256, reading its
tensors and config, and whether a published run record kept its weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from repeatability.records import storage
from repeatability.records.artifacts import ADAPTER, ADAPTER_CONFIG, ADAPTER_WEIGHTS, WEIGHTS_FILE, read_json
from repeatability.records.integrity import file_sha256


def save_adapter(path: Path, model: Any) -> str:
    """Save a PEFT model's adapter atomically (tmp dir, then rename); return its SHA-256.

    A save that fails leaves no ``adapter/`` and removes its temporary folder; a full, read-only
    or failing filesystem raises :class:`~repeatability.records.storage.StorageFault`.
    """
    tmp = path / f".{ADAPTER}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    with storage.writing(path / ADAPTER):
        try:
            model.save_pretrained(str(tmp))
            os.replace(tmp, path / ADAPTER)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return adapter_sha256(path)


def adapter_sha256(path: Path) -> str:
    """SHA-256 of ``adapter/adapter_model.safetensors`` (what ``sha256sum`` prints)."""
    return file_sha256(path / ADAPTER / ADAPTER_WEIGHTS)


def adapter_dir(path: Path) -> Path:
    return path / ADAPTER


def weights_kept(path: Path) -> bool:
    """Whether the run still has its adapter weights (a published run record does not)."""
    return (path / WEIGHTS_FILE).is_file()


def adapter_weights_path(path: Path) -> Path:
    return path / ADAPTER / ADAPTER_WEIGHTS


def read_adapter_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of the run's adapter weights as a numpy array (bf16/fp16 through torch).

    Raises:
        FileNotFoundError: the run has no adapter weights.
    """
    from safetensors.numpy import load_file

    weights = adapter_weights_path(path)
    if not weights.exists():
        raise FileNotFoundError(weights)
    try:
        return load_file(str(weights))
    except (TypeError, ValueError):  # numpy has no bfloat16
        import torch
        from safetensors.torch import load_file as load_torch

        return {k: v.to(torch.float32).numpy() for k, v in load_torch(str(weights)).items()}


def read_adapter_config(path: Path) -> dict[str, Any]:
    """The run's PEFT ``adapter_config.json`` (``{}`` when it has none)."""
    file = path / ADAPTER / ADAPTER_CONFIG
    return read_json(file) if file.exists() else {}
