"""What ran: the setup records of a run summary (``summary.json``) — the cell, seeds, determinism
flags, optimizer as asked and as it ran, numerics, device, model, data, batching, the lock and the
tracker. :mod:`repeatability.records.summary` holds them in :class:`~repeatability.records.summary.Summary`
beside what came out (metrics, timings, memory, adapter ...); its module doc says how to extend
the schema. Every field is documented with :func:`~repeatability.records.schema.doc`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from repeatability.config.cell import OptimConfig
from repeatability.records.schema import doc


@dataclass
class Cell:
    """The cell's names, as in the directory name."""

    model: str = doc("model config name (`model=`)")
    dataset: str = doc("dataset config name (`dataset=`)")
    optim: str = doc("optimizer config name; with historical state maps `<optim>-maps_<maps>`")
    variant: str = doc("extra cell label (`variant=`), empty when none")


@dataclass
class SeedRules:
    """The rule that chose each source's seed: `trial`, `fixed`, `hf42` (the Trainer's 42) or
    `entropy` (drawn from the OS and recorded). One field per seeded source, in the order of
    :data:`repeatability.config.run.SEED_SOURCES` (tests/test_declarations.py checks)."""

    lora_init: str = doc("rule of the LoRA-initialisation seed")
    data_order: str = doc("rule of the data-order seed")
    dropout: str = doc("rule of the dropout seed")
    generation: str = doc("rule of the generation seed")



@dataclass
class Seeds:
    lora_init: int = doc("seed of the global RNG when `get_peft_model` draws the LoRA A matrices")
    data_order: int = doc("seed of the training sampler (`TrainingArguments.data_seed`)")
    dropout: int = doc("seed of the RNG during training (`TrainingArguments.seed`): dropout")
    generation: int = doc("seed of the first sampled generation (sample k uses seed + k)")
    split: int = doc("seed of the train/validation/held-out split (the same in every trial)")
    policy: str = doc("`determinism.seed_policy`: `per_trial`, `fixed` or `paper`")
    rules: SeedRules = doc("the rule per source")


@dataclass
class ThreadBudget:
    threads: int = doc("torch intra-op threads this job set")
    cores: int = doc("cores the budget was computed from")
    parallel_jobs: int = doc("jobs sharing those cores")
    source: str = doc("where the budget came from (`determinism.threads`, SLURM `cpus_per_task`, joblib `n_jobs`, "
                      "the machine)")


@dataclass
class Determinism:
    """Flags read back after setting them."""

    mode: str = doc("`determinism.mode`: `strict`, `default` or `off`")
    use_deterministic_algorithms: bool = doc("`torch.are_deterministic_algorithms_enabled()`")
    cudnn_deterministic: bool = doc("`torch.backends.cudnn.deterministic`")
    cudnn_benchmark: bool = doc("`torch.backends.cudnn.benchmark`")
    CUBLAS_WORKSPACE_CONFIG: str | None = doc("the environment variable as set")
    FLASH_ATTENTION_DETERMINISTIC: str | None = doc("the environment variable as set")
    cuda_initialised_before_flags: bool = doc("CUDA was already initialised when the flags were set "
                                              "(then they may be too late)")
    torch_num_threads: int = doc("`torch.get_num_threads()`")
    thread_budget: ThreadBudget = doc("threads per job so that jobs × threads ≤ cores")


def _as_asked(config: type) -> list[tuple[str, Any, Any]]:
    """The fields of a config group as the summary records them: same names, types and texts."""
    hints = typing.get_type_hints(config)
    return [(f.name, hints[f.name], doc(f.metadata["doc"])) for f in dataclasses.fields(config)]


# The optim config as asked is recorded field for field (``asdict(cfg.optim)``), so its record is derived
# from OptimConfig (each field's text is declared there), not declared beside it.
OptimRequested = dataclasses.make_dataclass(
    "OptimRequested", [*_as_asked(OptimConfig), ("lr", float, doc("learning rate (`train.lr`)"))],
    namespace={"__module__": __name__, "__doc__": "The `optim` config as asked, and the learning rate."})


@dataclass
class OptimEffective:
    """Read from the optimizer object after training."""

    class_: str = doc("optimizer class (module.qualname)", key="class")
    bits: int = doc("8 if any state tensor is 8-bit, else 32")
    paging_requested: bool = doc("the config asked for paged state")
    paging_effective: bool = doc("any state tensor is paged")
    paging_note: str = doc("why paging is not in effect, or empty")
    n_param_tensors: int = doc("trainable parameter tensors")
    n_params: int = doc("trainable parameters")
    state_8bit_tensors: int = doc("parameter tensors whose Adam state is 8-bit")
    state_8bit_params: int = doc("parameters whose Adam state is 8-bit")
    state_8bit_param_fraction: float = doc("fraction of trainable parameters whose Adam state is 8-bit "
                                           "(tensors under `min_8bit_size` keep 32-bit)")
    state_dtypes: dict[str, int] = doc("{dtype name without `torch.` (`uint8`, `float32`): state tensor count}")

    def __post_init__(self) -> None:
        if isinstance(self.state_dtypes, dict) and any(k.startswith("torch.") for k in self.state_dtypes):
            raise ValueError("optimizer.effective.state_dtypes keys are dtype names without 'torch.': "
                             f"{self.state_dtypes}")


@dataclass
class StateMaps:
    """The 8-bit state quantization maps read back from the optimizer state (`qmap1`/`qmap2`)
    after training; see historical-optimizer-maps.md."""

    requested: str = doc("`optim.state_maps`")
    name: str = doc("`current`, `bnb_0.41.0`, `unrecognised`, or `none (no 8-bit state)` for 32-bit state")
    maps: dict[str, Any] = doc("{`qmap1`, `qmap2`: {`sha256` (of the float32 bytes), `n`, `min`, `max`}}")


@dataclass
class Optimizer:
    requested: OptimRequested = doc("the optimizer as asked")
    effective: OptimEffective = doc("the optimizer that really ran")
    state_maps: StateMaps | None = doc("the 8-bit state maps in force")


@dataclass
class Precision:
    """What ran numerically."""

    compute_dtype: str = doc("compute dtype of the 4-bit layers and LoRA")
    mixed_precision: str = doc("`no`, `fp16` or `bf16`")
    autocast: bool = doc("the Trainer ran the forward under autocast")
    grad_scaler: bool = doc("a loss scaler ran (fp16)")
    scaler_skipped_steps: int = doc("optimizer steps the scaler skipped for inf/NaN gradients")
    scaler_skipped_at: list[int] = doc("their step numbers (first 100)")
    final_loss_scale: float | None = doc("the scaler's last scale; null without a scaler")


@dataclass
class Quantization:
    name: str = doc("`quant` config name")
    load_in_4bit: bool = doc("the base is loaded in 4 bits")
    quant_type: str = doc("`nf4` or `fp4`")
    double_quant: bool = doc("double quantization of the 4-bit constants")
    mixed_precision: str = doc("`quant.mixed_precision` as asked")


@dataclass
class Device:
    type: str = doc("`cpu` or `cuda`")
    name: str = doc("CPU model or GPU name")
    compute_dtype: str = doc("compute dtype")
    quantization: Quantization = doc("the `quant` config but its compute dtype")
    n_4bit_layers: int = doc("bitsandbytes 4-bit linear layers in the model")
    bnb_cpu_inference_repack: str = doc("bitsandbytes' CPU inference repack of 4-bit weights is disabled (it breaks "
                                        "LoRA gradients after an eval pass on AVX512-BF16 CPUs), or `not applicable`")


@dataclass
class Lora:
    r: int = doc("LoRA rank")
    alpha: int = doc("LoRA alpha")
    dropout: float = doc("LoRA dropout")
    targets: str = doc("`all_linear` or `attention`")
    target_modules: list[str] = doc("module names LoRA was attached to")


@dataclass
class Model:
    name: str = doc("model config name")
    source: str = doc("`gguf_package`, `hub` or `local`")
    resolved: str = doc("the path or hub id loaded")
    architecture: str = doc("model family")
    n_params: int = doc("parameter elements as stored (a 4-bit weight counts half)")
    n_params_note: str = doc("says so in words")
    n_trainable_params: int = doc("trainable (LoRA) parameters")
    lora: Lora = doc("the adapter's shape")


@dataclass
class Data:
    dataset: str = doc("dataset config name")
    source: str = doc("`fortune`, `chatterbot`, `hub` or `local`")
    kind: str = doc("`text` or `instruction`")
    template: str = doc("the instruction template, or `plain (bos + text + eos)`")
    bos: str = doc("text prepended to each example")
    eos: str = doc("text appended to each example")
    n_total: int = doc("examples after selection")
    n_train: int = doc("training examples")
    n_val: int = doc("validation slice (from the training split)")
    n_heldout: int = doc("held-out examples")
    n_heldout_scored: int = doc("held-out examples scored (`eval.max_examples`)")
    split_seed: int = doc("seed of the split")
    heldout_raw_sha256: str = doc("SHA-256 of the held-out examples before templating")
    heldout_sha256: str = doc("SHA-256 of the scored held-out texts")
    heldout_file: str = doc("`_splits/<heldout_sha256>.jsonl`, relative to the study: the scored examples")
    max_length: int = doc("tokens per example (truncation)")


@dataclass
class Batching:
    """How training and scoring batches were formed (`train.batching`, `eval.batching`)."""

    train: str = doc("`padded` (each batch padded to its longest example) or `padding_free` (one row, "
                     "per-example `position_ids`)")
    eval: str = doc("held-out scoring: `padded` (length-sorted batches) or `padding_free`")
    train_real_tokens: int = doc("real (non-padding) tokens the training steps computed")
    train_token_slots: int = doc("token slots the training steps computed, padding included")
    real_token_efficiency: float = doc("`train_real_tokens / train_token_slots` (1.0 padding-free)")


@dataclass
class Lock:
    """The run's environment against the project's lock (`requirements/cpu.txt`, `cuda.txt` or `cuda12.txt` by
    torch's build, plus `bootstrap.txt`; repeatability/records/lock.py). Also in `environment.json`."""

    file: str | None = doc("the lock compared with, relative to the project; null when none was found "
                              "(an unlocked install)")
    sha256: str | None = doc("SHA-256 of that lock file")
    matches: bool | None = doc("every installed distribution (but pip, setuptools and this project) has the lock's "
                                  "version and nothing else is installed; null without a lock")
    mismatched: list[str] = doc("each distribution that differs: `name version (lock version)`, `name missing`, "
                                "`name version not in the lock`")


@dataclass
class Numerics:
    """The run's numerics fingerprint (schema 6): the base model's loss on a fixed canary batch
    before the first update. LoRA's B matrices start at zero, so it depends only on the weights, the
    data pipeline, the code and the kernels, not on the trial's seeds: equal in every trial of a cell
    run with the same code on the same machine, and different when the forward changes."""

    canary_loss: float = doc("mean NLL per target token of the canary batch (natural log), in eval mode, "
                             "before training")
    canary_loss_hex: str = doc("the same float, exactly (`float.hex()`): what runs are grouped by")
    canary_sequences: int = doc("held-out sequences in the canary batch (the first ones of the scored split)")
    canary_tokens: int = doc("target tokens in the canary batch")
    canary_ids_sha256: str = doc("SHA-256 of the canary batch's token ids")
    commit: str | None = doc("the project's git commit the run executed (null outside a git checkout)")
    dirty: bool | None = doc("tracked files differed from that commit when the run started")


@dataclass
class Tracking:
    """The experiment-tracker run of this run (`tracking=`; repeatability/records/tracking.py)."""

    name: str = doc("`tensorboard`, `mlflow` or `wandb`")
    run_name: str = doc("`<cell>/trial-NN`, the tracker's run name")
    dir: str = doc("tensorboard: event-file folder, relative to the run; wandb: the offline run folder, "
                   "relative to the study", optional=True)
    uri: str = doc("mlflow: the tracking URI", optional=True)
    experiment: str = doc("mlflow: the experiment (the study)", optional=True)
    project: str = doc("wandb: the project (the study)", optional=True)
    mode: str = doc("wandb: `offline` or `online`", optional=True)
    run_id: str = doc("mlflow, wandb: the tracker's run id", optional=True)
