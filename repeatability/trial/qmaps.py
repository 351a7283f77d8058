"""The 8-bit state quantization maps of bitsandbytes' optimizers: today's, and the ones
bitsandbytes 0.36-0.41.0 really used, replayed through today's optimizer.

bitsandbytes' 8-bit Adam stores each state tensor as uint8 codes plus one fp32 absmax per
block of 256; a code indexes a 256-entry map of values in [-1, 1] (``dynamic``, first moment)
or [0, 1] (``udynamic``, second moment). The optimizer keeps the maps as tensors
(``optimizer.name2qmap``) and copies them into each parameter's state as ``qmap1``/``qmap2``;
bitsandbytes 0.50's CPU kernel dequantizes and requantizes with the tensors it is given, so a
historical map placed in ``name2qmap`` before the first step is what the update really uses.

Up to 0.41.0, ``create_dynamic_map(signed=False)`` built 524 values instead of 256 (see
``docs/historical-optimizer-maps.md`` for the derivation and the source lines): the CUDA
kernels load only the first 256 entries of the sorted list, so the unsigned map *as the
kernel read it* tops out at 0.0933 of the block's absmax. That replica is built here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

STATE_MAPS = ("current", "bnb_0.41.0")
KERNEL_CODE_ENTRIES = 256  # the 8-bit blockwise kernels load threadIdx.x < 256 entries of each code


def dynamic_map_bnb_0_41_0(signed: bool, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The full list bitsandbytes 0.41.0's ``create_dynamic_map`` returned (sorted).

    Re-implemented from that release's algorithm: for each exponent ``i`` the fraction values
    are the midpoints of ``linspace(0.1, 1, fraction_items)`` scaled by ``10**(i - 6)``; the
    unsigned map counts the sign bit as a data bit (``non_sign_bits = total_bits``), which
    doubles ``fraction_items``, and its "additional items" block sat *inside* the exponent loop,
    adding 2 more values per exponent. Signed: 254 + 2 = 256 values (identical to today's map).
    Unsigned: 508 + 14 + 2 = 524 values; the padding loop adds nothing when the list is longer
    than 256.
    """
    non_sign_bits = total_bits - (1 if signed else 0)
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    if not signed:
        additional_items *= 2
    values: list[float] = []
    for i in range(max_exponent_bits):
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        shift = 0 if signed else 1
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits + shift) + 1)
        values += _scaled_midpoints(fraction_items, scale, signed)
        if additional_items > 0:  # the 0.41.0 indentation: once per exponent, not once after the loop
            values += _scaled_midpoints(additional_items + 1, scale, signed)
    values += [0.0, 1.0]
    values += [0.0] * max(0, 256 - len(values))
    return torch.tensor(sorted(values), dtype=torch.float32)


def _scaled_midpoints(n_boundaries: int, scale: float, signed: bool) -> list[float]:
    boundaries = torch.linspace(0.1, 1, n_boundaries)
    means = (boundaries[:-1] + boundaries[1:]) / 2.0
    out = (scale * means).tolist()
    return out + (-(scale * means)).tolist() if signed else out


def historical_maps(name: str) -> dict[str, torch.Tensor]:
    """``{"dynamic", "udynamic"}`` maps of a release, as its 8-bit kernels read them."""
    if name == "bnb_0.41.0":
        return {key: dynamic_map_bnb_0_41_0(signed)[:KERNEL_CODE_ENTRIES].contiguous()
                for key, signed in (("dynamic", True), ("udynamic", False))}
    if name == "current":
        import bitsandbytes.functional as F

        return {"dynamic": F.create_dynamic_map(signed=True), "udynamic": F.create_dynamic_map(signed=False)}
    raise ValueError(f"unknown state maps {name!r}; one of {', '.join(STATE_MAPS)}")


def has_state(optimizer: Any) -> bool:
    """True once any parameter has optimizer state (after a step, or loaded from a checkpoint)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    return any(inner.state.get(p) for g in inner.param_groups for p in g["params"])


def install_maps(optimizer: Any, name: str) -> None:
    """Put ``name``'s maps into a bitsandbytes 8-bit optimizer before its first step.

    bitsandbytes fills ``name2qmap`` at construction and copies it into each parameter's
    state (``qmap1``/``qmap2``) when that state is created at the first step.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    if not hasattr(inner, "name2qmap"):
        raise TypeError(f"{type(inner).__name__} has no 8-bit state maps (name2qmap)")
    if has_state(optimizer):
        raise RuntimeError("state maps must be installed before the optimizer's first step")
    inner.name2qmap.update(historical_maps(name))


def describe_map(t: torch.Tensor) -> dict[str, Any]:
    """SHA-256 of the float32 bytes, size and range of one map tensor."""
    flat = t.detach().to("cpu", torch.float32).contiguous()
    return {"sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest(), "n": flat.numel(),
            "min": float(flat.min()), "max": float(flat.max())}


def _expected(name: str) -> dict[str, str]:
    """SHA-256 the state keys hold under ``name``: qmap1 = dynamic, qmap2 = udynamic."""
    maps = historical_maps(name)
    return {"qmap1": describe_map(maps["dynamic"])["sha256"], "qmap2": describe_map(maps["udynamic"])["sha256"]}


def maps_in_force(optimizer: Any, requested: str) -> dict[str, Any]:
    """The maps the optimizer's 8-bit states really hold, read back from ``qmap1``/``qmap2``.

    ``name`` is the state-maps choice whose (qmap1, qmap2) pair every 8-bit state matches, or
    ``unrecognised``; ``maps`` describes each distinct tensor found per state key (the signed
    map is the same in every release, so only qmap2 tells them apart). 32-bit state: no maps.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    found: dict[str, dict[str, dict[str, Any]]] = {"qmap1": {}, "qmap2": {}}
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state.get(p, {})
            for key, seen in found.items():
                if torch.is_tensor(state.get(key)):
                    d = describe_map(state[key])
                    seen.setdefault(d["sha256"], d)
    if not any(found.values()):
        return {"requested": requested, "name": "none (no 8-bit state)", "maps": {}}
    held = {key: set(v) for key, v in found.items()}
    name = next((n for n in STATE_MAPS if all(held[k] == {sha} for k, sha in _expected(n).items())), "unrecognised")
    maps = {key if len(v) == 1 else f"{key}[{i}]": d
            for key, v in found.items() for i, d in enumerate(v.values())}
    return {"requested": requested, "name": name, "maps": maps}
