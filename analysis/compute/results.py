"""The report's compute layer: every number the report shows, computed once.

``python -m analysis.report`` runs load → compute → present: :func:`analysis.load.load_study`
reads the study through the contract, :func:`compute` turns it into :class:`Results` (frames
and values only: no document, no sentence, no formatted number), and the ``sections*`` modules
present them (tables, figures, prose from :mod:`analysis.present.prose`). Each entry is computed once
per report, so nothing needs a cache: the costly one, the pairwise adapter distances
(:func:`analysis.compute.adapter_distance.pair_table`, which reads every adapter), feeds both the
variance decomposition and the adapter-distance section.

Three words that once shared "divergence" stay apart here: a run *blows up* (``blowup_*``;
``status == "diverged"`` in the run summary), adapters lie a *distance* apart
(``adapter_*``), loss curves *part* (``parting*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.compute import (
    ablations,
    adapter_distance,
    anova,
    blowups,
    curves,
    equivalence,
    generations,
    power,
    reproducibility,
    stats,
    tables,
    task_scores,
    variance,
    verdict,
)
from analysis.compute import provenance
from analysis.compute.lr_edge import EdgeResults, compute_edge
from analysis.compute.survival import SurvivalResults, compute_survival
from analysis.config import AnalysisConfig
from analysis.load import FINISHED, Study, column
from repeatability.records import metrics as registry
from repeatability.records.summary import COLUMNS as S

PERPLEXITY_METRICS = registry.keys("perplexity")  # the first is the primary one (repeatability.records.metrics)
SECOND_METRIC = PERPLEXITY_METRICS[1]
LOSS_METRICS = registry.keys("loss")
TIME_METRICS = (S.timings.train_s, S.timings.eval_s, S.timings.total_s)
LOSS_ATOL = 0.01  # nats/token: a difference in loss curves worth calling material
ARM_COLUMNS = ["cell", "trial_i", "trial_j", "rel_l2", "cosine"]


@dataclass(frozen=True)
class PromptTable:
    """One prompt's completions side by side (Tables 4–7 shape)."""

    dataset: str
    prompt_index: int
    prompt: str
    mode: str
    table: pd.DataFrame


@dataclass(frozen=True)
class Parting:
    """Where arm X's loss curve parts from arm Y's, per trial (``first_step`` at atol 0,
    ``first_step_tol`` beyond :data:`LOSS_ATOL`); ``seed_matched``: the arms share seeds."""

    x: str
    y: str
    seed_matched: bool
    table: pd.DataFrame


@dataclass(frozen=True)
class Results:
    """Everything the report presents, computed by :func:`compute` (frames as the compute
    modules return them; the tables written to ``tables/`` are these, or views of them).

    Attributes:
        study: the loaded study (what the runs recorded, for tables that only show it).
        config: the analysis settings the numbers were computed under.
        others: the studies given with ``--compare``.
        status_counts: runs per status.
        environment_differences: :func:`analysis.compute.verdict.environment_differences`.
        lock: :func:`analysis.compute.verdict.lock_status` (which lock files the runs were installed from).
        verdicts: :func:`analysis.compute.verdict.cell_verdicts`.
        bitwise: :func:`analysis.compute.verdict.bitwise_verdicts`.
        perplexity_tables: Tables 1/2 by (metric, dataset), for every recorded metric of
            :data:`PERPLEXITY_METRICS`.
        cell_stats: :func:`analysis.compute.stats.cell_stats` by recorded metric.
        seed_matched: the seed-matched trials of each pair of cells that differ only in the
            optimizer (:func:`analysis.compute.stats.comparison_pairs`); ``[]``: not matched.
        comparisons: :func:`analysis.compute.stats.compare_all`.
        ofat: :func:`analysis.compute.variance.decompose` (adapter rows from ``adapter_pairs``).
        anova: :func:`analysis.compute.anova.crossed_anova`.
        adapter_pairs: :func:`analysis.compute.adapter_distance.pair_table`, per module.
        adapter_whole, adapter_kinds, adapter_layers, adapter_cells: that table per trial
            pair, per module kind, per layer and per cell.
        adapter_arms: whole-adapter distance between seed-matched arms, per trial.
        adapters_not_kept: finished runs whose adapter weights are not on disk though their SHA-256
            was recorded (:func:`analysis.compute.adapter_distance.weights_not_kept`).
        blowup_references, blowup_rates: :mod:`analysis.compute.blowups` per (model, dataset) and cell.
        lr_edge: :func:`analysis.compute.lr_edge.compute_edge` (blow-ups, edge, LR sensitivity and
            update inflation per arm and learning rate); ``None`` without an LR axis.
        survival: :func:`analysis.compute.survival.compute_survival` (time to blow-up per run, Kaplan–Meier
            per arm, log-rank, update inflation per step); ``None`` unless a horizon study.
        equivalence: :func:`analysis.compute.equivalence.comparisons` (empty without a finished run).
        compare_cells: :func:`analysis.compute.blowups.study_cells` of this study and of ``others``
            (empty without others).
        compare_pooled: :func:`analysis.compute.blowups.pooled_counts` of ``compare_cells``.
        cross_trials, cross_cells: the same trials with the same seeds in this study and in
            ``others`` (:func:`analysis.compute.reproducibility.trial_pairs`, ``cell_summary``); empty
            without others or without such trials; cross_machines: where this study and each such
            other ran (:func:`analysis.compute.reproducibility.machines`).
        provenance: each run's commit, dirty flag and numerics fingerprint
            (:func:`analysis.compute.provenance.runs_table`).
        task_spreads, task_baselines, task_comparisons: :mod:`analysis.compute.task_scores` (empty
            frames when no run recorded a task score).
        trials_needed: :func:`analysis.compute.power.trials_needed`.
        final_loss_stats: :func:`analysis.compute.stats.stats_table` of the final losses.
        parting: where the trials of a cell part (:func:`analysis.compute.curves.within_cell_parting`
            at atol 0, plus ``first_step_tol``).
        parting_pairs: where the arms of each comparison part.
        loss_dispersion: :func:`analysis.compute.curves.dispersion` of the training loss.
        generation_agreement: :func:`analysis.compute.generations.agreement`.
        generation_tables: every prompt's completions side by side, per dataset and mode.
        answer_letters: Tables 8/9 per dataset (datasets with multiple-choice prompts).
        sampling, sampling_cells, base_repeats: the ablations (:mod:`analysis.compute.ablations`).
        memory, memory_label: Table 3 and the memory figure it shows.
        time_metrics: the timing keys some run recorded.
        time_tables: Tables 10/11 per dataset; time_stats: statistics of ``time_metrics``.
        not_as_asked: :func:`analysis.compute.verdict.not_as_asked`.
        n_unknown_optimizer: finished runs that recorded no optimizer state.
        problems: what could not be read, one row per problem.
    """

    study: Study
    config: AnalysisConfig
    others: tuple[Study, ...]
    status_counts: dict[str, int]
    environment_differences: pd.DataFrame
    lock: verdict.LockStatus
    verdicts: pd.DataFrame
    bitwise: pd.DataFrame
    perplexity_tables: dict[tuple[str, str], pd.DataFrame]
    cell_stats: dict[str, pd.DataFrame]
    seed_matched: dict[tuple[str, str], list[int]]
    comparisons: pd.DataFrame
    ofat: pd.DataFrame
    anova: list[tuple[anova.Design, str, pd.DataFrame]]
    adapter_pairs: pd.DataFrame
    adapter_whole: pd.DataFrame
    adapter_kinds: pd.DataFrame
    adapter_layers: pd.DataFrame
    adapter_cells: pd.DataFrame
    adapter_arms: pd.DataFrame
    adapters_not_kept: int
    blowup_references: pd.DataFrame
    blowup_rates: pd.DataFrame
    lr_edge: EdgeResults | None
    survival: SurvivalResults | None
    equivalence: pd.DataFrame
    compare_cells: pd.DataFrame
    compare_pooled: pd.DataFrame
    cross_trials: pd.DataFrame
    cross_cells: pd.DataFrame
    cross_machines: pd.DataFrame
    provenance: pd.DataFrame
    task_spreads: pd.DataFrame
    task_baselines: pd.DataFrame
    task_comparisons: pd.DataFrame
    trials_needed: pd.DataFrame
    final_loss_stats: pd.DataFrame
    parting: pd.DataFrame
    parting_pairs: tuple[Parting, ...]
    loss_dispersion: pd.DataFrame
    generation_agreement: pd.DataFrame
    generation_tables: tuple[PromptTable, ...]
    answer_letters: dict[str, pd.DataFrame]
    sampling: pd.DataFrame
    sampling_cells: pd.DataFrame
    base_repeats: pd.DataFrame
    memory: pd.DataFrame
    memory_label: str
    time_metrics: tuple[str, ...]
    time_tables: dict[str, pd.DataFrame]
    time_stats: pd.DataFrame
    not_as_asked: pd.DataFrame
    n_unknown_optimizer: int
    problems: pd.DataFrame


def compute(study: Study, config: AnalysisConfig | None = None,
            others: Sequence[Study] = ()) -> Results:
    """Every number of the report of ``study`` (and the ``others`` to compare with), once."""
    config = config or AnalysisConfig()
    runs = study.runs
    matched = {(x, y): stats.paired_trials(runs, x, y) for x, y in stats.comparison_pairs(runs)}
    pairs = adapter_distance.pair_table(runs, study.path)
    within = curves.within_cell_parting(study.curves)
    cells, blow = _cells(study, within), _blowups(study, config, others)
    return Results(study=study, config=config, others=tuple(others),
                   seed_matched=matched, comparisons=stats.compare_all(runs),
                   ofat=variance.decompose(runs, pairs), anova=anova.crossed_anova(runs),
                   trials_needed=power.trials_needed(runs), lr_edge=compute_edge(study, config),
                   survival=compute_survival(study, config),
                   task_spreads=task_scores.spreads(runs), task_baselines=task_scores.baselines(runs),
                   task_comparisons=task_scores.compare(runs, config),
                   **cells, **_perplexity(runs), **_adapters(study, pairs, matched),
                   **blow, **_cross(study, others, cells["verdicts"], blow["equivalence"]),
                   **_loss(study, within, matched),
                   **_generations(study.generations), **_ablations(study),
                   **_resources(runs), **_not_as_asked(study))


def _cells(study: Study, within: pd.DataFrame) -> dict[str, Any]:
    runs = study.runs
    return {"status_counts": runs["status"].value_counts().to_dict(),
            "environment_differences": verdict.environment_differences(runs),
            "lock": verdict.lock_status(runs), "provenance": provenance.runs_table(runs),
            "verdicts": verdict.cell_verdicts(runs, study.generations),
            "bitwise": verdict.bitwise_verdicts(runs, study.curves, study.generations, within)}


def _perplexity(runs: pd.DataFrame) -> dict[str, Any]:
    """Tables 1/2 and cell statistics of each perplexity some run recorded (the primary
    one always)."""
    metrics = [m for m in PERPLEXITY_METRICS
               if m == stats.PRIMARY_METRIC or column(runs, m).notna().any()]
    datasets = sorted(runs["dataset"].unique())
    return {"perplexity_tables": {(m, d): tables.perplexity_table(runs, d, m)
                                  for m in metrics for d in datasets},
            "cell_stats": {m: stats.cell_stats(runs, m) for m in metrics}}


def _adapters(study: Study, pairs: pd.DataFrame,
              matched: dict[tuple[str, str], list[int]]) -> dict[str, Any]:
    """The adapter distance per trial pair, module kind, layer and cell, and between
    seed-matched arms."""
    whole, kinds = adapter_distance.whole_adapter(pairs), adapter_distance.by_kind(pairs)
    arms = [adapter_distance.arm_pairs(study.runs, study.path, x, y, trials)
            for (x, y), trials in matched.items() if trials]
    arms = [a for a in arms if len(a)]
    return {"adapter_pairs": pairs, "adapter_whole": whole, "adapter_kinds": kinds,
            "adapters_not_kept": adapter_distance.weights_not_kept(study.runs, study.path),
            "adapter_layers": adapter_distance.by_layer(pairs),
            "adapter_cells": adapter_distance.summarise(whole, kinds),
            "adapter_arms": pd.concat(arms, ignore_index=True) if arms
            else pd.DataFrame(columns=ARM_COLUMNS)}


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


def _loss(study: Study, within: pd.DataFrame,
          matched: dict[tuple[str, str], list[int]]) -> dict[str, Any]:
    """Final-loss statistics, dispersion, and where curves part, at atol 0 and
    :data:`LOSS_ATOL` (``first_step`` = any difference, ``first_step_tol`` = beyond it)."""
    tol = curves.within_cell_parting(study.curves, atol=LOSS_ATOL).set_index("cell")["first_step"]
    parting = within.copy()
    parting.insert(5, "first_step_tol", parting["cell"].map(tol))
    pairs = []
    for (x, y), trials in matched.items():
        paired = curves.paired_parting(study.curves, x, y)
        paired.insert(4, "first_step_tol",
                      curves.paired_parting(study.curves, x, y, atol=LOSS_ATOL)["first_step"].to_numpy())
        pairs.append(Parting(x, y, bool(trials), paired))
    return {"final_loss_stats": stats.stats_table(study.runs, LOSS_METRICS), "parting": parting,
            "parting_pairs": tuple(pairs), "loss_dispersion": curves.dispersion(study.curves)}


def _generations(gens: pd.DataFrame) -> dict[str, Any]:
    """Agreement between trials, every prompt side by side, answer letters (per dataset)."""
    if gens.empty:
        return {"generation_agreement": pd.DataFrame(), "generation_tables": (),
                "answer_letters": {}}
    prompt_tables, letters = [], {}
    for dataset, rows in gens.groupby("dataset", sort=True):
        for _, p in generations.prompts(rows).iterrows():
            prompt_tables += [PromptTable(str(dataset), int(p["prompt_index"]), str(p["prompt"]), mode,
                                          generations.side_by_side(rows, int(p["prompt_index"]), mode))
                              for mode in sorted(rows["mode"].dropna().unique())]
        table = generations.answer_letters(rows)
        if not table.empty:
            letters[str(dataset)] = table
    return {"generation_agreement": generations.agreement(gens),
            "generation_tables": tuple(prompt_tables), "answer_letters": letters}


def _ablations(study: Study) -> dict[str, Any]:
    per_prompt = ablations.sampling(study.generations) if not study.generations.empty \
        else pd.DataFrame()
    return {"sampling": per_prompt, "base_repeats": ablations.base_repeats(study.runs),
            "sampling_cells": ablations.sampling_by_cell(per_prompt) if not per_prompt.empty
            else pd.DataFrame()}


def _resources(runs: pd.DataFrame) -> dict[str, Any]:
    """Table 3, and Tables 10/11 with time statistics of the timings some run recorded."""
    memory, label = tables.memory_table(runs)
    recorded = tuple(k for k in TIME_METRICS if column(runs, k).notna().any())
    return {"memory": memory, "memory_label": label, "time_metrics": recorded,
            "time_tables": {d: tables.timing_table(runs, d) for d in sorted(runs["dataset"].unique())}
            if recorded else {},
            "time_stats": stats.stats_table(runs, recorded) if recorded else pd.DataFrame()}


def _not_as_asked(study: Study) -> dict[str, Any]:
    done = study.runs[study.runs["status"].isin(FINISHED)]
    return {"not_as_asked": verdict.not_as_asked(study.runs),
            "n_unknown_optimizer": int(column(done, S.optimizer.effective.class_).isna().sum()),
            "problems": pd.DataFrame([vars(p) for p in study.problems])}
