"""Typed configuration schema (the groups that make a cell — model, dataset, optim, lora, quant —
are in :mod:`repeatability.config.cell`).

Every config group in ``conf/`` is backed by one dataclass here, registered in Hydra's
``ConfigStore`` so that a typo or a wrong type fails at compose time, before any compute
(Hydra structured configs). Cross-field checks live in ``__post_init__`` and run when
:func:`to_run_config` turns the composed ``DictConfig`` into objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from repeatability.config import evaluators as task_evaluators
from repeatability.config.cell import DatasetConfig, LoraConfig, ModelConfig, OptimConfig, QuantConfig, check_choice
from repeatability.config.errors import ConfigError

# Every seeded source of a run, declared once (one vocabulary for the config, the trial side, the records
# and the analysis): each has an override in DeterminismConfig, and a seed and its rule in the summary
# (records.run_setup.Seeds and SeedRules; tests/test_declarations.py checks they agree). The ones that
# shape training: two trials with equal training seeds are a matched pair.
SEED_SOURCES: tuple[str, ...] = ("lora_init", "data_order", "dropout", "generation")
TRAINING_SEED_SOURCES: tuple[str, ...] = tuple(s for s in SEED_SOURCES if s != "generation")
SEED_POLICIES = ("per_trial", "fixed", "paper")
DETERMINISM_MODES = ("strict", "default", "off")
# padded: each batch padded to its longest example (evaluation: length-sorted batches);
# padding_free: a batch's examples concatenated into one row with per-example position_ids
# (transformers' DataCollatorWithFlattening / packed-sequence masking), no padding at all
BATCHINGS = ("padded", "padding_free")
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "conf" / "prompts"  # eval.prompts presets
TASK_EVALUATORS = task_evaluators.NAMES  # declared in repeatability.config.evaluators
TASK_BASELINES = ("zero_shot", "few_shot")
TRACKERS = ("none", "tensorboard", "mlflow", "wandb")  # repeatability.records.tracking: the Trainer's report_to
WANDB_MODES = ("auto", "offline", "online")


@dataclass
class TrainConfig:
    """Training loop settings. ``max_steps`` > 0 overrides ``epochs``."""

    name: str = "cpu"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # warm-up as a fraction of all steps (as studies state it)
    max_grad_norm: float = 1.0
    max_length: int = 64  # tokens per example (truncation); batches are padded dynamically
    eval_every: int = 10  # validation-slice loss every k optimizer steps (0 = never)
    val_examples: int = 32  # validation slice carved from the training split
    gradient_checkpointing: bool = False
    # mid-run checkpoints (adapter, optimizer state incl. 8-bit state and absmax, scheduler, every
    # RNG, grad scaler, loss rows) every k optimizer steps; a value in (0, 1) is a share of the
    # run's steps (the Trainer's save_steps convention); 0 = never. A re-run resumes from the last.
    checkpoint_every: float = 0.25
    keep_checkpoints: bool = False  # keep checkpoints/ after the run finished (default: removed)
    # padded | padding_free (see BATCHINGS); padding_free is refused at load time when the model's
    # attention does not keep packed examples apart (modelling.check_packed_attention)
    batching: str = "padded"
    # NEFTune (Jain et al. 2023): uniform noise of scale alpha/sqrt(length*hidden) added to the input
    # embeddings in training only (the Trainer's own neftune_noise_alpha); null = off
    neftune_noise_alpha: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.batching, BATCHINGS, "train.batching")
        if self.neftune_noise_alpha is not None and self.neftune_noise_alpha <= 0:
            raise ConfigError(f"train.neftune_noise_alpha={self.neftune_noise_alpha}: must be > 0 (or null for off)")
        if self.checkpoint_every < 0 or (self.checkpoint_every > 1
                                         and self.checkpoint_every != int(self.checkpoint_every)):
            raise ConfigError(f"train.checkpoint_every={self.checkpoint_every}: use a step count >= 1, "
                              "a share of the run in (0, 1), or 0 for no checkpoints")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
        if self.max_steps == 0 or (self.max_steps < 0 and self.epochs <= 0):
            raise ConfigError("train: set train.max_steps > 0 or train.epochs > 0")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr}: must be > 0")
        if self.max_length < 8:
            raise ConfigError(f"train.max_length={self.max_length}: must be >= 8")
        self._check_warmup()

    def _check_warmup(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0 or self.warmup_steps < 0:
            raise ConfigError("train.warmup_ratio must be in [0, 1) and train.warmup_steps >= 0")
        if self.warmup_ratio and self.warmup_steps:
            raise ConfigError("train: set train.warmup_steps or train.warmup_ratio, not both")
        if (self.warmup_ratio or self.warmup_steps) and self.lr_scheduler == "constant":
            # the Trainer's "constant" schedule ignores warm-up silently
            raise ConfigError("train.lr_scheduler=constant ignores warm-up; use constant_with_warmup (or linear)")


@dataclass
class EvalConfig:
    """Held-out scoring and generation."""

    max_examples: int | None = None  # cap on held-out examples scored (None = whole split)
    batch_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 0.1
    top_p: float = 0.1
    sample: bool = True  # generate with temperature/top-p under the generation seed
    sample_repeats: int = 1  # K sampled generations per prompt, seeds gen_seed + k (paper ablation a)
    greedy: bool = True  # also generate greedily
    base_perplexity: bool = True  # score the base model once per (model, dataset, split)
    base_repeats: int = 1  # score the base K times: the spread must be exactly 0 (paper ablation b)
    ppl_overflow: float = 1e30  # a perplexity above this (or inf/NaN) marks the run diverged
    batching: str = "padded"  # held-out scoring: padded (length-sorted) | padding_free (packed rows)
    # task evaluators besides perplexity (TASK_EVALUATORS: repeatability/config/evaluators.py): classification
    # (accuracy and macro-F1, the class chosen by likelihood) | generation (exact match, ROUGE-1/2/L of greedy answers)
    tasks: list[str] = field(default_factory=list)
    task_examples: int | None = 100  # a fixed seeded subset of the held-out split (null = all of it)
    task_max_new_tokens: int = 32  # greedy answers of the generation evaluator
    # the base model scored with the same evaluators once per study: zero_shot | few_shot
    baselines: list[str] = field(default_factory=list)
    few_shot_k: int = 3  # solved training examples before each question (few_shot baseline)
    # a prompt set replacing dataset.prompts: a preset name (conf/prompts/<name>.yaml, e.g.
    # bello_questions: reference 001's question set) or a file (a YAML list, or one prompt per line)
    prompts: str | None = None

    def __post_init__(self) -> None:
        check_choice(self.batching, BATCHINGS, "eval.batching")
        for name in self.tasks:
            check_choice(name, TASK_EVALUATORS, "eval.tasks")
        for name in self.baselines:
            check_choice(name, TASK_BASELINES, "eval.baselines")
        if self.baselines and not self.tasks:
            raise ConfigError("eval.baselines scores the base with the task evaluators: set eval.tasks too "
                              "(e.g. eval.tasks=[classification])")
        if self.task_examples is not None and self.task_examples < 1:
            raise ConfigError(f"eval.task_examples={self.task_examples}: must be >= 1 (or null for all)")
        if self.few_shot_k < 1 or self.task_max_new_tokens < 1:
            raise ConfigError("eval.few_shot_k and eval.task_max_new_tokens must be >= 1")
        if self.sample_repeats < 1 or self.base_repeats < 1:
            raise ConfigError("eval.sample_repeats and eval.base_repeats must be >= 1")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"eval.max_examples={self.max_examples}: must be >= 1 (or null for all)")


@dataclass
class DeterminismConfig:
    """Seeds and determinism flags. Each source's seed is tied to the trial or fixed."""

    mode: str = "default"  # strict | default | off
    seed_policy: str = "per_trial"  # per_trial | fixed | paper
    base_seed: int = 1234
    split_seed: int = 42  # the train/test split: the same for every trial and optimizer
    # per-source override: "trial" (follow the trial) or "fixed" (base_seed); null = from policy
    lora_init: str | None = None
    data_order: str | None = None
    dropout: str | None = None
    generation: str | None = None
    threads: int | None = None  # torch intra-op threads (None = torch default)

    def __post_init__(self) -> None:
        check_choice(self.mode, DETERMINISM_MODES, "determinism.mode")
        check_choice(self.seed_policy, SEED_POLICIES, "determinism.seed_policy")
        for key in SEED_SOURCES:
            value = getattr(self, key)
            if value is not None:
                check_choice(value, ("trial", "fixed"), f"determinism.{key}")


@dataclass
class TrackingConfig:
    """Which experiment tracker sees the run (through the Trainer's ``report_to``).

    Tracking never changes a result: it is left out of the config a finished run is compared
    with on re-run (``sweep._NEUTRAL_KEYS``).
    """

    name: str = "none"  # none | tensorboard | mlflow | wandb
    # mlflow: where runs go (default: file:<results>/<study>/_mlflow, a local file store)
    tracking_uri: str | None = None
    # mlflow experiment / wandb project name (default: the study's name)
    project: str | None = None
    # wandb: auto = online when logged in (WANDB_API_KEY or ~/.netrc), else offline
    mode: str = "auto"

    def __post_init__(self) -> None:
        check_choice(self.name, TRACKERS, "tracking")
        check_choice(self.mode, WANDB_MODES, "tracking.mode")
        if self.tracking_uri and self.name != "mlflow":
            raise ConfigError(f"tracking.tracking_uri is read by tracking=mlflow only, not tracking={self.name}")


@dataclass
class DiagnosticsConfig:
    """Measurements that never change a result (off by default: they cost time)."""

    # a 32-bit shadow of AdamW fed the optimizer's own gradients, per step and module kind:
    # update inflation, stored/exact second moment, 8-bit top-code share (repeatability/trial/optimtrace.py)
    optimizer_trace: bool = False
    # trace every k-th optimizer step (and the first): the shadow AdamW still takes every gradient, so a
    # traced step's row is what k=1 gives for it; only the rows between are not computed
    optimizer_trace_every: int = 1

    def __post_init__(self) -> None:
        if self.optimizer_trace_every < 1:
            raise ConfigError(f"diagnostics.optimizer_trace_every={self.optimizer_trace_every}: must be >= 1 "
                              "(1 traces every step)")


@dataclass
class RunConfig:
    """The whole run: one (model, dataset, optim) cell and one trial."""

    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    optim: OptimConfig = MISSING
    lora: LoraConfig = MISSING
    quant: QuantConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    determinism: DeterminismConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    study: str = "default"
    trial: int = 1
    variant: str = ""  # extra cell label (experiments that vary something besides model/data/optim)
    results_dir: str = "runs"  # a user's runs; published studies live in results/ (artifacts.PUBLISHED_ROOT)
    cache_dir: str = "${oc.env:REPEATABILITY_CACHE,${oc.env:HOME}/.cache/repeatability}"
    device: str = "auto"  # auto | cpu | cuda
    # run claims (repeatability.launching.claims): how often a running launcher refreshes its claim's
    # heartbeat, and after how long without one a claim made on another host is taken over
    claim_heartbeat_s: float = 30.0
    claim_stale_after_s: float = 600.0

    def __post_init__(self) -> None:
        if self.claim_heartbeat_s <= 0 or self.claim_stale_after_s < 3 * self.claim_heartbeat_s:
            raise ConfigError(
                f"claim_heartbeat_s={self.claim_heartbeat_s:g}, claim_stale_after_s={self.claim_stale_after_s:g}: "
                "the heartbeat must be positive and the stale timeout at least 3 heartbeats")
        if self.trial < 1:
            raise ConfigError(f"trial={self.trial}: trials are numbered from 1; use trial=1,2,...")
        if not self.study or "/" in self.study:
            raise ConfigError(f"study={self.study!r}: use a plain name without '/'")
        check_choice(self.device, ("auto", "cpu", "cuda"), "device")
        if self.eval.tasks and self.dataset.kind != "instruction":
            raise ConfigError(f"eval.tasks={list(self.eval.tasks)}: task evaluators score answers to prompts; dataset "
                              f"{self.dataset.name} is kind={self.dataset.kind} (use an instruction dataset, e.g. "
                              "dataset=qa or dataset=quote_topics)")


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "dataset": DatasetConfig,
    "optim": OptimConfig,
    "lora": LoraConfig,
    "quant": QuantConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "determinism": DeterminismConfig,
    "tracking": TrackingConfig,
}


def register_configs() -> None:
    """Register the schema so ``conf/**.yaml`` files can name it in their defaults lists, and
    the ``${pid:}`` resolver that keeps the sweep folders of launchers started in the same
    second apart (cached like Hydra's ``${now:}``, so parallel workers keep the launcher's)."""
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)


def to_run_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Resolve a composed config into checked dataclasses (runs every ``__post_init__``)."""
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf validation: wrong type, missing key
        raise ConfigError(f"invalid config: {str(exc).splitlines()[0]}") from exc
    assert isinstance(obj, RunConfig)
    return obj
