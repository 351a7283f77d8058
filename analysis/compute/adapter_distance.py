"""Adapter distance (not a training blow-up, not where loss curves part: see
:mod:`analysis.compute.curves`): how far apart the adapters of a cell's trials are: the effective
update ΔW = s·B·A per LoRA module, compared pairwise between trials.

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
Adapters are read only through :mod:`repeatability.records.artifacts` (``read_adapter_tensors``,
``read_adapter_config``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import FINISHED, Study, column
from repeatability.records import adapter_files
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

Factors = dict[str, tuple[np.ndarray, np.ndarray]]  # module → (B, A) as stored (unscaled)
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
    return Adapter(lora_factors(adapter_files.read_adapter_tensors(run)),
                   adapter_scaling(adapter_files.read_adapter_config(run)))


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


# --------------------------------------------------------------------------- per cell

def _finished_runs(runs: pd.DataFrame, study: Path, cell: str) -> list[tuple[Path, int]]:
    """(run path, trial) of the cell's finished runs that have adapter weights, by trial."""
    rows = runs[(runs["cell"] == cell) & runs["status"].isin(FINISHED)]
    paths = [(study / str(row["run"]), int(row["trial"])) for _, row in rows.sort_values("trial").iterrows()]
    return [(path, trial) for path, trial in paths if adapter_files.adapter_weights_path(path).exists()]


def weights_not_kept(runs: pd.DataFrame, study: Path) -> int:
    """Finished runs that recorded their adapter's SHA-256 but whose weights are not on disk
    (a published study ships its run records, not its adapters)."""
    rows = runs[runs["status"].isin(FINISHED)]
    recorded = column(rows, S.adapter.sha256).notna()
    return sum(1 for (_, row), has_sha in zip(rows.iterrows(), recorded)
               if has_sha and not adapter_files.adapter_weights_path(Path(study) / str(row["run"])).exists())


def _read_all(runs: list[tuple[Path, int]]) -> dict[int, Adapter]:
    """Each run's adapter; unreadable ones and ones without LoRA A/B pairs left out (logged)."""
    adapters = {}
    for path, trial in runs:
        try:
            adapter = read_adapter(path)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the report
            log.warning("%s: adapter not readable: %s", path, exc)
            continue
        if adapter.factors:
            adapters[trial] = adapter
        else:
            log.info("%s: no lora_A/lora_B weight pairs in the adapter", path)
    return adapters


def _cell_pairs(cell: str, adapters: dict[int, Adapter]) -> pd.DataFrame:
    """Per (trial pair, module) of one cell."""
    frames = []
    for i, j in combinations(sorted(adapters), 2):
        frame = compare(adapters[i], adapters[j])
        frame.insert(0, "cell", cell)
        frame.insert(1, "trial_i", i)
        frame.insert(2, "trial_j", j)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PAIR_COLUMNS))


def pair_table(runs: pd.DataFrame, study: Path) -> pd.DataFrame:
    """Per cell, trial pair (i < j) and module: ``norm_i``, ``norm_j`` (||ΔW||_F), ``distance``
    (||ΔW_i − ΔW_j||_F) and ``inner`` (<ΔW_i, ΔW_j>_F), over finished runs with an adapter.

    Reads every adapter of the study: the report calls it once (:func:`analysis.compute.results.compute`).
    """
    frames = [_cell_pairs(str(cell), _read_all(_finished_runs(runs, Path(study), str(cell))))
              for cell in sorted(runs["cell"].unique())]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PAIR_COLUMNS))


def arm_pairs(runs: pd.DataFrame, study: Path, cell_x: str, cell_y: str,
              trials: list[int]) -> pd.DataFrame:
    """Whole-adapter ``rel_l2``/``cosine`` between arm X's and arm Y's adapter of each of
    ``trials`` (seed-matched arms: what the arm difference alone does to the weights)."""
    x = _read_all([k for k in _finished_runs(runs, Path(study), cell_x) if k[1] in trials])
    y = _read_all([k for k in _finished_runs(runs, Path(study), cell_y) if k[1] in trials])
    frames = [compare(x[t], y[t]).assign(cell=f"{cell_x} vs {cell_y}", trial_i=t, trial_j=t)
              for t in sorted(set(x) & set(y))]
    if not frames:
        return pd.DataFrame(columns=["cell", "trial_i", "trial_j", "rel_l2", "cosine"])
    return whole_adapter(pd.concat(frames, ignore_index=True))


def aggregate(pairs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sum modules into one update per group of ``by`` (ΔW of the group = every module's ΔW
    concatenated), then ``rel_l2`` and ``cosine`` of that concatenation.
    """
    squares = pairs.assign(norm_i=pairs["norm_i"] ** 2, norm_j=pairs["norm_j"] ** 2,
                           distance=pairs["distance"] ** 2)
    out = squares.groupby(by, sort=True)[["norm_i", "norm_j", "distance", "inner"]].sum()
    out[["norm_i", "norm_j", "distance"]] = np.sqrt(out[["norm_i", "norm_j", "distance"]])
    out["rel_l2"] = [relative_l2(d, a, b) for d, a, b in
                     zip(out["distance"], out["norm_i"], out["norm_j"])]
    out["cosine"] = [cosine(p, a, b) for p, a, b in zip(out["inner"], out["norm_i"], out["norm_j"])]
    return out.reset_index()


def whole_adapter(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, trial_i, trial_j): the whole adapter's ``rel_l2`` and ``cosine``."""
    return aggregate(pairs, ["cell", "trial_i", "trial_j"])


def by_layer(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, layer): mean, min and max over trial pairs of the layer's ``rel_l2`` and
    ``cosine`` (a layer's update = its modules' ΔW concatenated)."""
    layers = aggregate(pairs, ["cell", "layer", "trial_i", "trial_j"])
    out = layers.groupby(["cell", "layer"])[["rel_l2", "cosine"]].agg(["mean", "min", "max"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.reset_index()


def by_kind(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, module kind, trial pair): the kind's ``rel_l2`` and ``cosine`` (its
    modules' ΔW concatenated)."""
    return aggregate(pairs, ["cell", "kind", "trial_i", "trial_j"])


def cell_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: adapters compared, pairs, identical pairs (distance exactly 0), mean ||ΔW||_F,
    mean/min/max whole-adapter ``rel_l2`` and ``cosine``, and the module kind (q_proj, ...)
    with the largest mean relative L2 (``farthest_kind``)."""
    return summarise(whole_adapter(pairs), by_kind(pairs))


def summarise(whole: pd.DataFrame, kinds: pd.DataFrame) -> pd.DataFrame:
    """:func:`cell_summary` from its parts (:func:`whole_adapter` and :func:`by_kind` of the
    same pairs), for a caller that has them already."""
    rows = []
    for cell, group in whole.groupby("cell", sort=True):
        norms = dict(zip(group["trial_i"], group["norm_i"])) | dict(
            zip(group["trial_j"], group["norm_j"]))
        kind = kinds[kinds["cell"] == cell].groupby("kind")["rel_l2"].mean()
        rows.append({"cell": cell, "n_adapters": len(norms), "n_pairs": len(group),
                     "n_identical_pairs": int((group["distance"] == 0).sum()),
                     "mean_norm": float(np.mean(list(norms.values()))),
                     **{f"rel_l2_{s}": float(getattr(group["rel_l2"], s)()) for s in
                        ("mean", "min", "max")},
                     **{f"cosine_{s}": float(getattr(group["cosine"], s)()) for s in
                        ("mean", "min", "max")},
                     "farthest_kind": str(kind.idxmax()) if kind.max() > 0 else "–"})
    return pd.DataFrame(rows)


def distance_matrix(pairs: pd.DataFrame, cell: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(trials, D², ||ΔW||²) of one cell's whole adapters: ``D²[a, b]`` the squared Frobenius
    distance between trials a and b (0 on the diagonal), ``||ΔW||²`` per trial."""
    whole = whole_adapter(pairs[pairs["cell"] == cell])
    trials = sorted(set(whole["trial_i"]) | set(whole["trial_j"]))
    pos = {t: k for k, t in enumerate(trials)}
    d2 = np.zeros((len(trials), len(trials)))
    n2 = np.zeros(len(trials))
    for _, row in whole.iterrows():
        a, b = pos[row["trial_i"]], pos[row["trial_j"]]
        d2[a, b] = d2[b, a] = row["distance"] ** 2
        n2[a], n2[b] = row["norm_i"] ** 2, row["norm_j"] ** 2
    return trials, d2, n2


ARM_COLUMNS = ["cell", "trial_i", "trial_j", "rel_l2", "cosine"]


@dataclass(frozen=True)
class AdapterResults:
    """The adapter-distance section's numbers (:func:`adapter_results`).

    Attributes:
        whole, kinds, layers, cells: the pair table per trial pair (:func:`whole_adapter`), per
            module kind (:func:`by_kind`), per layer (:func:`by_layer`) and per cell (:func:`summarise`).
        arms: whole-adapter distance between seed-matched arms, per trial (:func:`arm_pairs`).
        not_kept: finished runs whose adapter weights are not on disk though their SHA-256 was
            recorded (:func:`weights_not_kept`).
    """

    whole: pd.DataFrame
    kinds: pd.DataFrame
    layers: pd.DataFrame
    cells: pd.DataFrame
    arms: pd.DataFrame
    not_kept: int


def adapter_results(study: Study, pairs: pd.DataFrame, matched: Mapping[tuple[str, str], list[int]]) -> AdapterResults:
    """The adapter distance per trial pair, module kind, layer and cell (``pairs``: :func:`pair_table`),
    and between seed-matched arms (``matched``: their trials)."""
    whole, kinds = whole_adapter(pairs), by_kind(pairs)
    arms = [arm_pairs(study.runs, study.path, x, y, trials) for (x, y), trials in matched.items() if trials]
    arms = [a for a in arms if len(a)]
    return AdapterResults(whole=whole, kinds=kinds, layers=by_layer(pairs), cells=summarise(whole, kinds),
                          arms=pd.concat(arms, ignore_index=True) if arms else pd.DataFrame(columns=ARM_COLUMNS),
                          not_kept=weights_not_kept(study.runs, study.path))
