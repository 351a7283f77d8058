"""Every task evaluator (``eval.tasks``), declared once: its name, the scores it records and how
the report words its method. The config's choices (:data:`repeatability.config.run.TASK_EVALUATORS`),
the summary's task-score fields (``metrics.<score>`` and the baselines'
:class:`~repeatability.records.summary.TaskScores`), the metric registry's ``task`` entries
(:mod:`repeatability.records.metrics`) and the report's description of the evaluators
(:mod:`analysis.present.sections_tasks`) are all derived from :data:`EVALUATORS`.

A new evaluator = one :class:`Evaluator` here + its implementation in
:data:`repeatability.trial.tasks.IMPLEMENTATIONS` (same name; tests/test_declarations.py checks
both lists agree); a new score of an existing evaluator = one :class:`Score` here + where it is
computed. Either changes the summary schema: bump its version
(:data:`repeatability.records.summary.SCHEMA_VERSION`) and regenerate the docs table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    """One score an evaluator records: a field of the summary's ``metrics`` (and of each baseline's
    scores) and a metric of the registry (higher is better)."""

    name: str  # the summary field, e.g. ``accuracy``
    doc: str  # its meaning in the summary schema (docs/run-directory.md)
    label: str  # axis and caption text, with its definition
    short: str  # its name in tables, e.g. ``macro-F1``


@dataclass(frozen=True)
class Evaluator:
    name: str  # the choice in ``eval.tasks``
    scores: tuple[Score, ...]
    method: str  # how it scores, one clause of the report's task-score section


EVALUATORS: dict[str, Evaluator] = {e.name: e for e in (
    Evaluator("classification", (
        Score("accuracy", "classification accuracy on the fixed task subset (`eval.tasks` has classification; see "
              "`tasks`)", "classification accuracy (class chosen by likelihood)", "accuracy"),
        Score("macro_f1", "macro-F1 over the classes on the same examples", "classification macro-F1", "macro-F1"),
    ), "classification picks the class whose name the model finds likeliest (no text parsed)"),
    Evaluator("generation", (
        Score("exact_match", "share of greedy answers equal to the reference after SQuAD normalisation (`eval.tasks` "
              "has generation)", "exact match of greedy answers (SQuAD-normalised)", "exact match"),
        Score("rouge1", "ROUGE-1 F-measure of greedy answers against the references, mean over examples",
              "ROUGE-1 F-measure of greedy answers", "ROUGE-1"),
        Score("rouge2", "ROUGE-2 F-measure, mean over examples", "ROUGE-2 F-measure of greedy answers", "ROUGE-2"),
        Score("rougeL", "ROUGE-L F-measure, mean over examples", "ROUGE-L F-measure of greedy answers", "ROUGE-L"),
    ), "generation answers greedily and is scored by exact match (SQuAD-normalised) and ROUGE F-measure"),
)}
NAMES: tuple[str, ...] = tuple(EVALUATORS)
SCORES: tuple[Score, ...] = tuple(s for e in EVALUATORS.values() for s in e.scores)


def score_names(evaluator: str) -> tuple[str, ...]:
    """The names of the scores ``evaluator`` records, in declaration order."""
    return tuple(s.name for s in EVALUATORS[evaluator].scores)


def names_text() -> str:
    """The evaluators' names in words: ``classification`` and/or ``generation``."""
    quoted = [f"`{n}`" for n in NAMES]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and/or {quoted[-1]}"
