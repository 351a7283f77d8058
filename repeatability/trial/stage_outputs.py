"""What a run's first stages hand on (:mod:`repeatability.trial.pipeline`): the prepared data and
the built model. Kept apart from the pipeline so that the trial's record
(:mod:`repeatability.records.record`), which reads them, does not import the pipeline that fills it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repeatability.trial import data, tasks


@dataclass
class Prepared:
    """Tokenized data of one run plus what the summary says about it."""

    train_ds: data.TokenDataset
    val_ds: data.TokenDataset
    heldout_texts: list[str]
    prompts: list[tuple[str, str]]
    info: dict[str, Any]
    tasks: tasks.TaskInputs | None = None  # the task evaluators' fixed subset (eval.tasks)


@dataclass
class Built:
    """The model with LoRA attached, its tokenizer, and what was measured while building it."""

    model: Any
    tokenizer: Any
    model_id: str
    n_4bit_layers: int
    base: dict[str, Any]  # the base model's held-out scores (evaluate.Perplexity.as_metrics("base_"), cached)
    load_s: float
    base_tasks: dict[str, Any]  # the base model's task scores (eval.baselines), once per study
    fingerprint: dict[str, Any]  # the canary-batch loss before the first update (evaluate.canary_fingerprint)
