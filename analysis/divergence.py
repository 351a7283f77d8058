"""How far apart the adapters of a cell's trials are: the effective update ΔW = s·B·A per LoRA
module, compared pairwise between trials.

Definitions (per module, and for the whole adapter as the concatenation of every module):

- ``ΔW = s · B @ A`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` under rsLoRA), read
  from the ``adapter_config.json`` next to the weights; both measures below are scale-free when
  two adapters share ``s``, the norms reported are of the scaled ΔW;
- relative L2 distance ``||ΔW_i − ΔW_j||_F / ((||ΔW_i||_F + ||ΔW_j||_F) / 2)`` (0 = same
  update, 2 = opposite updates, √2 for orthogonal updates of equal norm);
- cosine similarity ``<ΔW_i, ΔW_j>_F / (||ΔW_i||_F ||ΔW_j||_F)`` of the flattened updates.

ΔW is never formed: with r×r (or 2r×2r) Gram matrices every norm and inner product costs
O((in + out)·r²). The difference uses ``ΔW_i − ΔW_j = B_i (A_i − A_j) + (B_i − B_j) A_j``, so
near-identical adapters keep their tiny distance (no cancellation of two large norms).
Adapters are read only through :func:`repeatability.artifacts.adapter_weights_path`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import FINISHED, column
from repeatability import artifacts

log = logging.getLogger(__name__)

Factors = dict[str, tuple[np.ndarray, np.ndarray]]  # module → (B, A) as stored (unscaled)
CONFIG_NAME = "adapter_config.json"  # PEFT's file next to adapter_model.safetensors
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
PAIR_COLUMNS = ("cell", "trial_i", "trial_j", "module", "layer", "kind", "norm_i", "norm_j",
                "distance", "inner")


@dataclass(frozen=True)
class Adapter:
    """One run's LoRA factors as stored, and the scaling s of ΔW = s·B·A."""

    factors: Factors
    scale: float = 1.0

    def scaled(self, module: str) -> tuple[np.ndarray, np.ndarray]:
        """(s·B, A) of one module in float64."""
        b, a = self.factors[module]
        return np.asarray(b, dtype=np.float64) * self.scale, np.asarray(a, dtype=np.float64)


def lora_factors(tensors: dict[str, np.ndarray]) -> Factors:
    """Pair PEFT's ``<module>.lora_A.weight`` (r×in) with ``<module>.lora_B.weight`` (out×r).

    Keys that are not LoRA A/B weights are ignored; a module with only one of A/B is left out
    with a warning.
    """
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match:
            parts.setdefault(match["module"], {})[match["which"]] = value
    out: Factors = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            log.warning("%s: lora_%s without its pair; left out", module, "".join(ab))
            continue
        out[module] = (ab["B"], ab["A"])
    return out


def _load_tensors(weights: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy; bf16/fp16 files go through torch."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(weights))
    except (TypeError, ValueError):  # numpy has no bfloat16
        import torch
        from safetensors.torch import load_file as load_torch

        return {k: v.to(torch.float32).numpy() for k, v in load_torch(str(weights)).items()}


def adapter_scaling(config: dict[str, Any]) -> float:
    """``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``); 1.0 when either is missing.

    Per-module ``rank_pattern``/``alpha_pattern`` are not applied (a warning says so).
    """
    alpha, r = config.get("lora_alpha"), config.get("r")
    if not alpha or not r:
        return 1.0
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        log.warning("adapter has per-module rank/alpha patterns; the global alpha/r is used")
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))


def read_adapter(run: Path) -> Adapter:
    """The run's LoRA factors and scaling, from the contract's adapter weights path.

    Raises:
        FileNotFoundError: the run has no adapter weights.
    """
    weights = artifacts.adapter_weights_path(run)
    config_file = weights.parent / CONFIG_NAME
    config = artifacts.read_json(config_file) if config_file.exists() else {}
    return Adapter(lora_factors(_load_tensors(weights)), adapter_scaling(config))


def _trace_product(x: np.ndarray, y: np.ndarray) -> float:
    """tr(x @ y) for square x, y without forming the product."""
    return float(np.einsum("ij,ji->", x, y))


def norm2(b: np.ndarray, a: np.ndarray) -> float:
    """||B @ A||_F² = tr((BᵀB)(AAᵀ))."""
    return max(_trace_product(b.T @ b, a @ a.T), 0.0)


def inner(b1: np.ndarray, a1: np.ndarray, b2: np.ndarray, a2: np.ndarray) -> float:
    """<B1 A1, B2 A2>_F = tr((B1ᵀB2)(A2 A1ᵀ))."""
    return _trace_product(b1.T @ b2, a2 @ a1.T)


def distance2(b1: np.ndarray, a1: np.ndarray, b2: np.ndarray, a2: np.ndarray) -> float:
    """||B1 A1 − B2 A2||_F², as ||[B1, B1−B2] @ [A1−A2; A2]||_F² (no cancellation of norms)."""
    if b1.shape != b2.shape or a1.shape != a2.shape:  # different ranks: the plain expansion
        return max(norm2(b1, a1) + norm2(b2, a2) - 2 * inner(b1, a1, b2, a2), 0.0)
    m = np.hstack([b1, b1 - b2])
    n = np.vstack([a1 - a2, a2])
    return max(_trace_product(m.T @ m, n @ n.T), 0.0)


def module_kind(module: str) -> tuple[int, str]:
    """(layer index or -1, last name part) of a module key, e.g. (3, "q_proj")."""
    match = _LAYER.search(module + ".")
    return (int(match.group(1)) if match else -1), module.rsplit(".", 1)[-1]


def compare(x: Adapter, y: Adapter) -> pd.DataFrame:
    """Per module present in both adapters: norms, distance and inner product of the two ΔW."""
    rows = []
    for module in sorted(set(x.factors) & set(y.factors)):
        (b1, a1), (b2, a2) = x.scaled(module), y.scaled(module)
        layer, kind = module_kind(module)
        rows.append({"module": module, "layer": layer, "kind": kind,
                     "norm_i": math.sqrt(norm2(b1, a1)), "norm_j": math.sqrt(norm2(b2, a2)),
                     "distance": math.sqrt(distance2(b1, a1, b2, a2)),
                     "inner": inner(b1, a1, b2, a2)})
    missing = set(x.factors) ^ set(y.factors)
    if missing:
        log.warning("%d modules are in only one of the two adapters; left out", len(missing))
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS[3:]))


def relative_l2(distance: float, norm_i: float, norm_j: float) -> float:
    """distance / mean of the two norms; 0 when both norms and the distance are 0."""
    mean = (norm_i + norm_j) / 2
    return distance / mean if mean else (0.0 if distance == 0 else math.nan)


def cosine(dot: float, norm_i: float, norm_j: float) -> float:
    """dot / (norm_i·norm_j); NaN when either update is zero."""
    return dot / (norm_i * norm_j) if norm_i and norm_j else math.nan
