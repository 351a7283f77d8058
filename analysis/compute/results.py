"""The report's core numbers: those several sections read, computed once.

``python -m analysis.report`` runs load → compute → present: :func:`analysis.load.load_study`
reads the study through the contract, :func:`compute` turns it into the core :class:`Results`
(frames, values and typed records only: no document, no sentence, no formatted number), then each
report section (:class:`analysis.present.section.Section`) computes the numbers only it reads from
these (:func:`analysis.report.compute` keeps them in :attr:`Results.sections`) and presents them.
Each entry is computed once per report, so nothing needs a cache: the costly one, the pairwise
adapter distances (:func:`analysis.compute.adapter_distance.pair_table`, which reads every
adapter), is a core number because both the variance decomposition and the adapter-distance
section read it.

Three words that once shared "divergence" stay apart here: a run *blows up* (``blowup_*``;
``status == "diverged"`` in the run summary), adapters lie a *distance* apart
(``adapter_*``), loss curves *part* (``parting*``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis.compute import (
    adapter_distance,
    blowups,
    curves,
    equivalence,
    provenance,
    reproducibility,
    stats,
    verdict,
)
from analysis.config import AnalysisConfig
from analysis.load import Study, column
from repeatability.records import metrics as registry

PERPLEXITY_METRICS = registry.keys("perplexity")  # the first is the primary one (repeatability.records.metrics)
SECOND_METRIC = PERPLEXITY_METRICS[1]


@dataclass(frozen=True)
class Results:
    """The numbers several parts of the report read, computed by :func:`compute` (frames as the
    compute modules return them; the tables written to ``tables/`` are these, or views of them),
    and each section's own numbers (:attr:`sections`).

    Attributes:
        study: the loaded study (what the runs recorded, for tables that only show it).
        config: the analysis settings the numbers were computed under.
        others: the studies given with ``--compare``.
        status_counts: runs per status.
        lock: :func:`analysis.compute.verdict.lock_status` (which lock files the runs were installed from).
        provenance: each run's commit, dirty flag and numerics fingerprint
            (:func:`analysis.compute.provenance.runs_table`).
        verdicts: :func:`analysis.compute.verdict.cell_verdicts`.
        bitwise: :func:`analysis.compute.verdict.bitwise_verdicts`.
        cell_stats: :func:`analysis.compute.stats.cell_stats` by recorded metric of
            :data:`PERPLEXITY_METRICS` (the primary one always).
        seed_matched: the seed-matched trials of each pair of cells that differ only in the
            optimizer (:func:`analysis.compute.stats.comparison_pairs`); ``[]``: not matched.
        comparisons: :func:`analysis.compute.stats.compare_all`.
        adapter_pairs: :func:`analysis.compute.adapter_distance.pair_table`, per module (read by the
            variance decomposition and the adapter-distance section).
        blowup_references, blowup_rates: :mod:`analysis.compute.blowups` per (model, dataset) and cell.
        equivalence: :func:`analysis.compute.equivalence.comparisons` (empty without a finished run).
        compare_cells: :func:`analysis.compute.blowups.study_cells` of this study and of ``others``
            (empty without others).
        compare_pooled: :func:`analysis.compute.blowups.pooled_counts` of ``compare_cells``.
        cross_trials, cross_cells: the same trials with the same seeds in this study and in
            ``others`` (:func:`analysis.compute.reproducibility.trial_pairs`, ``cell_summary``); empty
            without others or without such trials; cross_machines: where this study and each such
            other ran (:func:`analysis.compute.reproducibility.machines`).
        sections: each report section's own numbers, by section name
            (:meth:`analysis.present.section.Section.of`); filled by :func:`analysis.report.compute`,
            empty from :func:`compute` alone.
    """

    study: Study
    config: AnalysisConfig
    others: tuple[Study, ...]
    status_counts: dict[str, int]
    lock: verdict.LockStatus
    provenance: pd.DataFrame
    verdicts: pd.DataFrame
    bitwise: pd.DataFrame
    cell_stats: dict[str, pd.DataFrame]
    seed_matched: dict[tuple[str, str], list[int]]
    comparisons: pd.DataFrame
    adapter_pairs: pd.DataFrame
    blowup_references: pd.DataFrame
    blowup_rates: pd.DataFrame
    equivalence: pd.DataFrame
    compare_cells: pd.DataFrame
    compare_pooled: pd.DataFrame
    cross_trials: pd.DataFrame
    cross_cells: pd.DataFrame
    cross_machines: pd.DataFrame
    sections: Mapping[str, Any] = field(default_factory=dict)


def compute(study: Study, config: AnalysisConfig | None = None,
            others: Sequence[Study] = ()) -> Results:
    """The core numbers of the report of ``study`` (and the ``others`` to compare with), once."""
    config = config or AnalysisConfig()
    runs = study.runs
    cells, blow = _cells(study), _blowups(study, config, others)
    return Results(study=study, config=config, others=tuple(others),
                   seed_matched={(x, y): stats.paired_trials(runs, x, y) for x, y in stats.comparison_pairs(runs)},
                   comparisons=stats.compare_all(runs), cell_stats=_cell_stats(runs),
                   adapter_pairs=adapter_distance.pair_table(runs, study.path),
                   **cells, **blow, **_cross(study, others, cells["verdicts"], blow["equivalence"]))


def _cells(study: Study) -> dict[str, Any]:
    runs = study.runs
    within = curves.within_cell_parting(study.curves)
    return {"status_counts": runs["status"].value_counts().to_dict(),
            "lock": verdict.lock_status(runs), "provenance": provenance.runs_table(runs),
            "verdicts": verdict.cell_verdicts(runs, study.generations),
            "bitwise": verdict.bitwise_verdicts(runs, study.curves, study.generations, within)}


def _cell_stats(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Cell statistics of each perplexity some run recorded (the primary one always)."""
    metrics = [m for m in PERPLEXITY_METRICS
               if m == stats.PRIMARY_METRIC or column(runs, m).notna().any()]
    return {m: stats.cell_stats(runs, m) for m in metrics}


def _blowups(study: Study, config: AnalysisConfig, others: Sequence[Study]) -> dict[str, Any]:
    """Blow-up references and rates, equivalence per comparison, and the side-by-side cells."""
    refs = blowups.references(study.runs, config)
    rates = blowups.arm_rates(study.runs, config)
    pairs = equivalence.comparisons(study.runs, config, rates=rates) if len(refs) \
        else pd.DataFrame(columns=list(equivalence.COLUMNS))
    cells = pd.DataFrame()
    if others:
        cells = pd.concat([blowups.study_cells(study, rates, refs)]
                          + [blowups.study_cells(s, blowups.arm_rates(s.runs, config),
                                                 blowups.references(s.runs, config)) for s in others],
                          ignore_index=True)
    return {"blowup_references": refs, "blowup_rates": rates, "equivalence": pairs,
            "compare_cells": cells, "compare_pooled": blowups.pooled_counts(cells) if others
            else pd.DataFrame()}


def _cross(study: Study, others: Sequence[Study], cell_verdicts: pd.DataFrame,
           pairs: pd.DataFrame) -> dict[str, Any]:
    """The same trials with the same seeds in ``others``, beside the seed spread and arm effect."""
    cross = pd.concat([reproducibility.trial_pairs(study, s) for s in others], ignore_index=True) \
        if others else pd.DataFrame(columns=list(reproducibility.PAIR_COLUMNS))
    spread = cell_verdicts.set_index("cell")["ppl_spread"]
    effect = {cell: abs(row["ratio_gmean"] - 1) for _, row in pairs.iterrows() for cell in (row["x"], row["y"])}
    paired = [s for s in others if s.name in set(cross["other"])]
    return {"cross_trials": cross,
            "cross_cells": reproducibility.cell_summary(cross, spread, pd.Series(effect, dtype=float)),
            "cross_machines": reproducibility.machines([study, *paired]) if paired
            else pd.DataFrame(columns=list(reproducibility.MACHINE_COLUMNS))}
