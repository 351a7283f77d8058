"""Short names for a study's cells, derived from what differs between them, so tables and
figures fit a 1280 px page; one legend maps each short name back to the full cell name.

A cell is ``model__dataset__optim__variant`` (:mod:`repeatability.records.artifacts`). Only the fields
that differ between the cells shown are kept, in that order, joined by `` · ``; the optimizer is
written in words (``paged_adamw_8bit-maps_bnb_0.41.0`` → ``8-bit · 0.41.0 maps``) and a
learning-rate variant in powers of ten (``lr0.001`` → ``lr 1e-3``), a ``key-value`` part as
``key value`` (``vary-data-order`` → ``vary data_order``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

from analysis.present.formatting import format_lr
from repeatability.config.run import SEED_SOURCES

FIELDS = ("model", "dataset", "optim", "variant")
SEP = " · "


def optim_words(optim: str) -> str:
    """``paged_adamw_8bit`` → ``8-bit``; ``…-maps_bnb_0.41.0`` adds ``· 0.41.0 maps``; a name the
    rules do not know is kept as it is."""
    name, _, maps = optim.partition("-maps_")
    bits = re.fullmatch(r"(?:paged_)?adamw?_(\d+)bit", name)
    words = f"{bits.group(1)}-bit" if bits else name
    if maps:
        words += SEP + maps.removeprefix("bnb_") + " maps"
    return words


# Variant parts written `key-value` (conf/vary, experiments/*.yaml): the value reads after its key.
# A `vary-…` value is a seed source (hyphens for underscores, conf/vary/*.yaml), so it may hold hyphens.
VARIED = (*SEED_SOURCES, "nothing", "everything")
KEYED = ("quant", "lora")


def _value(key: str, rest: list[str]) -> tuple[str, int]:
    """The value after ``key`` and how many parts it spans."""
    if key == "vary":
        joined = "-".join(rest)
        for source in sorted(VARIED, key=len, reverse=True):
            if joined == (h := source.replace("_", "-")) or joined.startswith(h + "-"):
                return source, h.count("-") + 1
    return rest[0], 1


def variant_words(variant: str) -> str:
    """``lr0.001`` → ``lr 1e-3``; ``horizon-lr0.0002`` → ``horizon · lr 2e-4``; ``vary-data-order``
    → ``vary data_order``; ``quant-nf4`` → ``quant nf4``; other parts as they are."""
    parts, words = re.split(r"(?<![eE])-", variant) if variant else [], []
    while parts:
        part, parts = parts[0], parts[1:]
        lr = re.fullmatch(r"lr([0-9.eE+-]+)", part)
        if lr:
            words.append(f"lr {format_lr(float(lr.group(1)))}")
        elif part in ("vary", *KEYED) and parts:
            value, n = _value(part, parts)
            words.append(f"{part} {value}")
            parts = parts[n:]
        else:
            words.append(part)
    return SEP.join(words)


def _fields(cell: str) -> dict[str, str]:
    parts = cell.split("__")
    return dict(zip(FIELDS, parts + [""] * (len(FIELDS) - len(parts)))) if len(parts) <= 4 \
        else {"model": cell, "dataset": "", "optim": "", "variant": ""}


def short_labels(cells: Iterable[str]) -> dict[str, str]:
    """Cell → short label, in the order given. Fields equal in every cell are left out (the
    optimizer is kept when nothing else is left); when the words would make two labels alike
    (``adamw_8bit`` and ``paged_adamw_8bit`` are both ``8-bit``) the fields are kept as named,
    and when even those collide, the full cell names are the labels."""
    cells = list(dict.fromkeys(cells))
    fields = {c: _fields(c) for c in cells}
    varying = [f for f in FIELDS if len({fields[c][f] for c in cells}) > 1] or ["optim"]
    words = {"optim": optim_words, "variant": variant_words}
    for say in (lambda f, v: words.get(f, str)(v), lambda f, v: v):
        labels = {c: SEP.join(w for w in (say(f, fields[c][f]) for f in varying) if w) for c in cells}
        if len(set(labels.values())) == len(cells) and all(labels.values()):
            return labels
    return {c: c for c in cells}


def unique_or(labels: dict[str, str], fallback: dict[str, str]) -> dict[str, str]:
    """``labels`` when no two are alike, else ``fallback``."""
    return labels if len(set(labels.values())) == len(labels) else fallback


def legend(labels: dict[str, str]) -> pd.DataFrame:
    """The legend table: one row per short label with its full cell name."""
    return pd.DataFrame({"label": list(labels.values()), "cell": list(labels)})
