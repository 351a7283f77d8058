"""The run summary (``summary.json``) as typed, documented records: the one schema that the
pipeline fills, :mod:`repeatability.records.artifacts` writes and reads, the analysis addresses
(:data:`COLUMNS`), the test fixtures build, and ``docs/run-directory.md`` lists (its field
table is :func:`markdown_table`, checked by a test; ``python -m repeatability.records.summary``
prints it).

The records of what ran (cell, seeds, optimizer, device, model, data ...) live in
:mod:`repeatability.records.run_setup`; those of what came out (metrics, task scores, timings,
memory, adapter ...) and :class:`Summary` itself here.

Extending it: add a field (``doc(...)``) to a record, or a new record and one field of
:class:`Summary` holding it; keep existing JSON keys (studies on disk are read with them), bump
:data:`SCHEMA_VERSION` and add the old version to :data:`SUPPORTED_SCHEMA_VERSIONS`; then
regenerate the docs table. A key not declared here is refused when written and reported when read.
Two groups are derived, not declared here: the task scores (in ``metrics`` and each baseline's
:class:`TaskScores`) from their evaluators (:mod:`repeatability.config.evaluators`), and
``optimizer.requested`` from the optim config (:mod:`repeatability.records.run_setup`).

Schema versions: 1 — the first; 2 — adds ``tracking`` and ``batching``; 3 — adds
``optimizer_trace`` (present only with ``diagnostics.optimizer_trace=true``); 4 — adds ``lock``
(the environment against the project's lock file); 5 — adds ``tasks``, ``neftune`` and the task
scores in ``metrics`` (present only with ``eval.tasks`` / ``train.neftune_noise_alpha``); 6 — adds
``numerics`` (the canary-batch fingerprint, with the commit and dirty flag). Older summaries read as
version 6 with the newer groups absent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from repeatability.config import evaluators as task_evaluators
from repeatability.records.run_setup import (
    Batching,
    Cell,
    Data,
    Determinism,
    Device,
    Lock,
    Model,
    Numerics,
    Optimizer,
    Precision,
    Seeds,
    Tracking,
)
from repeatability.records.schema import ABSENT, Columns, doc, from_dict, markdown_rows, missing, to_dict

SCHEMA_VERSION = 6
SUPPORTED_SCHEMA_VERSIONS = (1, 2, 3, 4, 5, 6)
STATUSES = ("complete", "diverged", "failed")


@dataclass
class _HeldoutMetrics:
    perplexity_token_weighted: float = doc("exp(total NLL / target tokens) on the held-out examples: "
                                           "the primary number")
    perplexity_mean_per_sequence: float = doc("mean of per-sequence perplexities (HF evaluate's `mean_perplexity`)")
    heldout_mean_token_nll: float = doc("mean NLL per target token", optional=True)
    heldout_tokens: int = doc("target tokens scored", optional=True)
    heldout_sequences: int = doc("sequences scored", optional=True)
    base_perplexity_token_weighted: float = doc("the base model's token-weighted perplexity on the same texts",
                                                optional=True)
    base_perplexity_mean_per_sequence: float = doc("the base model's mean per-sequence perplexity", optional=True)
    base_perplexity_repeats: list[float] = doc("the base scored `eval.base_repeats` times", optional=True)
    base_perplexity_repeat_spread: float = doc("max − min of those (0 expected)", optional=True)


def _task_scores(name: str, doc_text: str, bases: tuple[type, ...] = ()) -> type:
    """A record of every evaluator's scores (:data:`repeatability.config.evaluators.SCORES`, optional
    floats), after the fields of ``bases``."""
    return dataclasses.make_dataclass(
        name, [(s.name, float, doc(s.doc, optional=True)) for s in task_evaluators.SCORES], bases=bases,
        namespace={"__module__": __name__, "__doc__": doc_text})


# The task scores (``eval.tasks``) are declared once, by their evaluator (repeatability.config.evaluators):
# Metrics holds them between the held-out and the training numbers (the order of summary.json and of
# the docs table), and a baseline's scores (``tasks.zero_shot``, ``tasks.few_shot``) are the same fields.
TASK_SCORES: tuple[str, ...] = tuple(s.name for s in task_evaluators.SCORES)
_ScoredMetrics = _task_scores("_ScoredMetrics", "Held-out numbers and task scores.", (_HeldoutMetrics,))
TaskScores = _task_scores(
    "TaskScores", "Task scores of one model on the fixed subset (the fields of `metrics` with the same names).")


@dataclass
class Metrics(_ScoredMetrics):
    final_train_loss: float = doc("training loss of the last logged step")
    final_val_loss: float = doc("last validation loss")
    steps: int = doc("optimizer steps done")


@dataclass
class Tasks:
    """What the task evaluators scored (schema 5; only with `eval.tasks`)."""

    evaluators: list[str] = doc(task_evaluators.names_text())
    n_examples: int = doc("held-out examples scored: a seeded subset (`eval.task_examples`, seed = the split seed)")
    subset_sha256: str = doc("SHA-256 of the scored prompts and references: the same in every run of a study")
    outputs: str = doc("the per-example record (`evals/tasks.json`: predictions, class log-probabilities, answers)")
    classes: list[str] = doc("the class names, in scoring order (classification)", optional=True)
    class_scoring: str = doc("how a class is chosen: by the model's likelihood of its name, no text parsing",
                             optional=True)
    decoding: str = doc("`greedy` (generation)", optional=True)
    max_new_tokens: int = doc("`eval.task_max_new_tokens` (generation)", optional=True)
    zero_shot: TaskScores = doc("the base model with the same evaluators, once per study "
                                "(`eval.baselines` has zero_shot)", optional=True)
    few_shot: TaskScores = doc("the base model with `few_shot_k` solved training examples before each question",
                               optional=True)
    few_shot_k: int = doc("`eval.few_shot_k`", optional=True)
    few_shot_indices: list[int] = doc("which training examples (indices into the training split)", optional=True)


@dataclass
class Neftune:
    """NEFTune (schema 5; only with `train.neftune_noise_alpha`)."""

    noise_alpha: float = doc("`train.neftune_noise_alpha`: uniform noise in ±alpha/sqrt(length × hidden) "
                             "on the input embeddings")
    scope: str = doc("when the noise is on: training steps only (the Trainer's hook acts in train mode; "
                     "validation, scoring and generation see none)")


@dataclass
class Timings:
    """Seconds."""

    model_load_s: float = doc("resolve and load tokenizer and base")
    train_s: float = doc("training")
    eval_s: float = doc("held-out scoring")
    generation_s: float = doc("generations")
    tasks_s: float = doc("task evaluators (`eval.tasks`; baselines not included)", optional=True)
    total_s: float = doc("the whole run")
    step_s_mean: float = doc("mean seconds per optimizer step (first step left out)")
    step_s_median: float = doc("median seconds per step")


@dataclass
class Memory:
    peak_rss_mb: float = doc("peak resident memory sampled during this run")
    process_max_rss_mb: float = doc("whole-process peak so far")
    max_allocated_mb: float = doc("CUDA: `torch.cuda.max_memory_allocated`", optional=True)
    device_total_mb: float = doc("CUDA: the device's memory", optional=True)
    max_allocated_pct: float = doc("CUDA: max allocated as % of the device (the paper's Table 3)", optional=True)


@dataclass
class Adapter:
    path: str = doc("`adapter`")
    sha256: str | None = doc("SHA-256 of `adapter_model.safetensors`")


@dataclass
class Resumed:
    from_step: int = doc("the checkpoint's step")
    checkpoint: str = doc("its folder name")


@dataclass
class CheckpointSave:
    step: int = doc("optimizer step")
    bytes: int = doc("size of the checkpoint folder")
    seconds: float = doc("time to write it")


@dataclass
class Checkpointing:
    every: float = doc("`train.checkpoint_every`")
    saved: list[CheckpointSave] = doc("each checkpoint written")
    kept: bool = doc("`train.keep_checkpoints`")


@dataclass
class Divergence:
    reason: str = doc("what was not finite or overflowed")
    step: int = doc("the step it happened")
    last_loss: float = doc("the last training loss seen")


@dataclass
class Error:
    type: str = doc("exception class")
    message: str = doc("its first line")


@dataclass
class OptimizerTrace:
    """The optimizer trace's headline figures (`diagnostics.optimizer_trace=true`; every step and
    module kind is in `optimizer_trace.csv`). Update inflation = norm of the update the optimizer
    applied / norm of exact fp32 AdamW's update from the same gradients, over all LoRA parameters."""

    file: str = doc("`optimizer_trace.csv`, relative to the run")
    steps: int = doc("optimizer steps traced (steps the fp16 grad scaler skipped are not)")
    kinds: list[str] = doc("module kinds traced (`q_proj`, ...); the file also has `all`")
    update_inflation_last: float = doc("update inflation at the last step")
    update_inflation_max: float = doc("largest update inflation over the steps")
    update_inflation_median: float = doc("median update inflation over the steps")
    v_ratio_median_last: float = doc("median over elements of stored / exact second moment at the last step")
    v_top_code_fraction_last: float = doc("share of 8-bit second-moment codes at the map's top value at the last step "
                                          "(NaN for 32-bit state)")
    seconds: float = doc("time the trace itself took (inside `timings.train_s`)")
    every: int = doc("rows at the first and every k-th optimizer step (`diagnostics.optimizer_trace_every`; "
                     "schema 6, absent = 1)", optional=True)


@dataclass
class Imported:
    source: str = doc("where the numbers come from (`--source`, default the CSV path)")
    citation: str = doc("the publication (`--citation`)", optional=True)
    row: dict[str, str] = doc("the CSV row as read (every column, as text)")


@dataclass
class Summary:
    """The record of one run."""

    schema_version: int = doc(f"{SCHEMA_VERSION} (runs written with version 1 still load)")
    headline: str = doc("the run in one paragraph of plain words: status, both perplexities vs the base, "
                        "the optimizer state that really ran, paging, device, dtype, seeds")
    status: str = doc("`complete`; `diverged` (loss turned NaN/inf, or held-out perplexity overflowed "
                      "`eval.ppl_overflow`: the numbers are the last ones seen); `failed` (an exception: "
                      "`error` and `error.txt`)")
    study: str = doc("study name")
    trial: int = doc("trial number (1-based)")
    cell: Cell = doc("the cell's names, as in the directory name")
    seeds: Seeds = doc("the seed each source got and the rule that chose it")
    determinism: Determinism = doc("determinism flags read back after setting them")
    optimizer: Optimizer = doc("requested and effective optimizer")
    precision: Precision = doc("what ran numerically")
    device: Device = doc("where it ran and how the base was quantized")
    model: Model = doc("the base model and the adapter")
    data: Data = doc("the data and its split")
    metrics: Metrics = doc("held-out perplexities (see *Perplexity* below), base-model perplexity, final losses")
    perplexity_definition: str = doc("text: how both perplexities are computed")
    timings: Timings = doc("seconds per stage")
    memory: Memory = doc("peak memory")
    adapter: Adapter = doc("the saved adapter")
    resumed: Resumed | None = doc("null, or the checkpoint the run continued from after an interruption "
                                     "(its `timings` cover the last attempt only)")
    checkpointing: Checkpointing = doc("mid-run checkpoints")
    divergence: Divergence | None = doc("null, or why the run diverged")
    error: Error | None = doc("null, or the exception of a failed run")
    tracking: Tracking | None = doc("null (`tracking=none`), or the tracker run (schema 2)")
    optimizer_trace: OptimizerTrace = doc("the optimizer trace's headline figures (schema 3; only with "
                                          "`diagnostics.optimizer_trace=true`)", optional=True)
    lock: Lock = doc("the environment against the project's lock file (schema 4; absent before)", optional=True)
    tasks: Tasks = doc("the task evaluators' subset, decoding and base-model baselines "
                       "(schema 5; only with `eval.tasks`)", optional=True)
    neftune: Neftune = doc("NEFTune's noise (schema 5; only with `train.neftune_noise_alpha`)", optional=True)
    numerics: Numerics = doc("the numerics fingerprint: the base model's loss on a fixed canary batch before the "
                             "first update, with the commit and dirty flag (schema 6; absent before)", optional=True)
    batching: Batching = doc("how batches were formed and how much of the computed tokens were padding "
                             "(schema 2; absent before)", optional=True)
    started_at: str = doc("ISO-8601 UTC")
    finished_at: str = doc("ISO-8601 UTC")
    imported: Imported = doc("only in runs imported from a published table (`analysis.import_table`); such a run "
                             "holds `status`, `study`, `trial`, `cell`, `headline`, "
                             "`metrics.perplexity_token_weighted` and what the table gives "
                             "(`metrics.perplexity_mean_per_sequence`, `metrics.base_perplexity_token_weighted`, "
                             "`memory.max_allocated_pct`/`max_allocated_mb`, `timings.train_s`/`eval_s`); "
                             "every other key is absent", optional=True)


# The flattened columns of ``analysis.load`` (``metrics.perplexity_token_weighted`` ...):
# ``COLUMNS.metrics.perplexity_token_weighted``; a misspelt field fails where it is written.
COLUMNS = Columns.of(Summary)


def parse(data: dict[str, Any]) -> Summary:
    """A summary as read from disk (any supported version), checked against the schema."""
    return from_dict(Summary, data)


def part(cls: type, data: dict[str, Any] | None, key: str) -> Any:
    """Record ``cls`` of the summary key ``key`` from what the pipeline measured; a key the schema
    does not declare, or a value of another type, raises here, where the group is filled.
    ``None`` stays ``null``."""
    return None if data is None else from_dict(cls, data, key)


def dump(record: Summary) -> dict[str, Any]:
    """The JSON form to write (fields never given are left out, ``None`` is ``null``)."""
    return to_dict(record)


def required_missing(record: Summary) -> list[str]:
    """Keys a finished run of the harness must have and ``record`` lacks (see ``doc(optional=)``)."""
    return [k for k in missing(record) if k != "schema_version"]


def markdown_table() -> str:
    """The `summary.json` field table of docs/run-directory.md."""
    return "\n".join(["| key | type | meaning |", "| --- | --- | --- |", *markdown_rows(Summary)])


__all__ = ["ABSENT", "COLUMNS", "SCHEMA_VERSION", "SUPPORTED_SCHEMA_VERSIONS", "Summary", "dump", "markdown_table",
           "parse", "part", "required_missing"]


if __name__ == "__main__":
    print(markdown_table())
