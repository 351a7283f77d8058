"""A study's bytes on disk, estimated from its configs before any training (preflight), so that a
study that cannot fit the free space of its ``results_dir`` is refused in one line.

What is counted, for every run still to do (a finished run is skipped, so it counts nothing):

- its **adapter** (``adapter/``): every LoRA tensor in fp32, plus PEFT's config and model card;
- its **checkpoints**: each holds the adapter again, the optimizer state (8 bytes per parameter
  for 32-bit AdamW; 2 per parameter plus an absmax per 256 and the two 256-entry maps per tensor
  for bitsandbytes' 8-bit state, 32-bit below ``min_8bit_size``), the optimizer trace's shadow
  moments (``diagnostics.optimizer_trace``), the Trainer's and the harness's state (a log row per
  step) and small fixed files. While a run trains it holds up to three (the two the Trainer keeps
  and the one being written); ``train.keep_checkpoints=true`` leaves two after it;
- its **per-step files**: ``loss_curve.csv``, ``optimizer_trace.csv``, TensorBoard's scalars and
  Hydra's job log (generous bytes per row), ``generations.jsonl`` (per prompt and decoding mode:
  the prompt twice and ``eval.max_new_tokens`` at 32 bytes each), ``evals/tasks.json``;
- a fixed :data:`SMALL_FILES` for the summary, environment, configs, manifest and Hydra's files.

The study needs every run's files once it has finished, plus, for each run training at once
(one with the sequential launcher, ``n_jobs`` with joblib, all of them on SLURM), what a run
holds beyond those while it trains. LoRA tensor sizes come from the model's ``config.json``
(built on PyTorch's meta device: no weights are read); where it is not on this machine the
adapter and checkpoints are not counted, and the refusal says so. Not counted: ``cache_dir``
(a converted model), MLflow's and W&B's stores, the report.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from repeatability.config.errors import ConfigError
from repeatability.config.run import RunConfig
from repeatability.records import storage

KIB = 1024
SMALL_FILES = 256 * KIB  # summary, environment, config, overrides, manifest, DONE, claim; Hydra's .hydra/
CHECKPOINT_FIXED = 64 * KIB  # rng_state.pth, scheduler.pt, training_args.bin, adapter_config.json, README.md
PER_TENSOR = KIB  # a tensor's entry in optimizer.pt (and its safetensors header line), pickled
PER_STEP_STATE = KIB  # trainer_state.json's log row + the harness's loss row and step time, per step
ROW_BYTES = {"loss_curve": 160, "optimizer_trace": 400, "tensorboard": 400, "job_log": 256}
GENERATED_TOKEN = 32  # bytes a generated token may take in generations.jsonl (completion and text)
TASK_EXAMPLE = 8 * KIB  # an example of evals/tasks.json per evaluator (prompt, reference, prediction)
LIVE_CHECKPOINTS = 3  # the Trainer's save_total_limit=2, plus the one being written before rotation


@dataclass(frozen=True)
class RunFootprint:
    """One run's bytes: ``after`` it finished, and at its ``peak`` while it trains."""

    adapter: int
    checkpoint: int  # one checkpoint-<step>/ folder
    files: int  # everything else the run and its job write
    live_checkpoints: int  # most checkpoints on disk at once while it trains
    kept_checkpoints: int  # checkpoints left once it finished
    shape_known: bool  # False: adapter and checkpoint are 0 because the model's shape is unknown here

    @property
    def after(self) -> int:
        return self.adapter + self.files + self.kept_checkpoints * self.checkpoint

    @property
    def peak(self) -> int:
        return self.adapter + self.files + self.live_checkpoints * self.checkpoint


def _config_source(cfg: RunConfig) -> tuple[str, str | None] | None:
    """Folder (and GGUF file) ``AutoConfig`` reads the model's shape from; None when not here."""
    model = cfg.model
    if model.path:
        return str(Path(model.path).expanduser()), None
    if model.source == "gguf_package":
        converted = Path(cfg.cache_dir).expanduser() / "models" / model.name
        if (converted / "config.json").exists():
            return str(converted), None
        spec = importlib.util.find_spec(model.gguf_package or "")
        if spec is None or not spec.submodule_search_locations or not model.gguf_file:
            return None
        shipped = Path(spec.submodule_search_locations[0]) / model.gguf_file
        return (str(shipped.parent), shipped.name) if shipped.exists() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model.hub_id or "", "config.json", revision=model.revision)
    return (str(Path(cached).parent), None) if isinstance(cached, str) else None


@functools.lru_cache(maxsize=32)
def _lora_tensors(folder: str, gguf_file: str | None, targets: tuple[str, ...], r: int) -> tuple[int, ...]:
    """Elements of every LoRA tensor (A: r x in, B: out x r) on the model's target linears."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    with torch.device("meta"):  # modules without storage: shapes only
        model = AutoModelForCausalLM.from_config(config)
    return tuple(n for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
                 for n in (r * module.in_features, module.out_features * r))


def lora_tensors(cfg: RunConfig) -> tuple[int, ...] | None:
    """Elements of every LoRA tensor of the run, or None when the model's shape is not known here."""
    source = _config_source(cfg)
    targets = cfg.model.lora_targets_all if cfg.lora.targets == "all_linear" else cfg.model.lora_targets_attention
    if source is None:
        return None
    try:
        return _lora_tensors(*source, tuple(targets), cfg.lora.r) or None
    # an estimate, never a stop: whatever building the shapes raises (an architecture or a GGUF file this
    # transformers cannot read) leaves the LoRA tensors uncounted, and the estimate says so
    except Exception:  # noqa: BLE001 - any failure means: shape not known here
        return None


def _optimizer_bytes(cfg: RunConfig, tensors: Sequence[int]) -> int:
    """optimizer.pt: the AdamW moments as the configured optimizer stores them."""
    optim = cfg.optim
    if optim.impl != "bnb_adamw" or optim.optim_bits != 8:
        return sum(8 * n for n in tensors)
    return sum(2 * n + 8 * math.ceil(n / 256) + 2 * 256 * 4 if n >= optim.min_8bit_size else 8 * n for n in tensors)


def train_steps(cfg: RunConfig, n_train: int) -> int:
    """Optimizer steps of the run: ``train.max_steps``, else the epochs over ``n_train`` examples."""
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps
    return math.ceil(t.epochs * math.ceil(n_train / t.batch_size) / t.grad_accum)


def _checkpoints(cfg: RunConfig, steps: int) -> tuple[int, int]:
    """(most on disk at once while training, left after the run)."""
    every = cfg.train.checkpoint_every
    every_steps = max(1, math.ceil(every * steps)) if 0 < every < 1 else int(every)
    saves = steps // every_steps if every_steps else 0
    kept = min(2, saves) if cfg.train.keep_checkpoints else 0
    return min(LIVE_CHECKPOINTS, saves), kept


def _files(cfg: RunConfig, steps: int, prompts: Sequence[str]) -> int:
    """Everything but the adapter and the checkpoints."""
    rows = steps + (steps // cfg.train.eval_every if cfg.train.eval_every else 0)
    total = SMALL_FILES + rows * ROW_BYTES["loss_curve"] + steps * ROW_BYTES["job_log"]
    if cfg.diagnostics.optimizer_trace:
        total += steps // cfg.diagnostics.optimizer_trace_every * 8 * ROW_BYTES["optimizer_trace"]
    if cfg.tracking.name == "tensorboard":
        total += rows * ROW_BYTES["tensorboard"]
    modes = cfg.eval.sample_repeats * cfg.eval.sample + cfg.eval.greedy
    total += sum(modes * (2 * len(p.encode()) + cfg.eval.max_new_tokens * GENERATED_TOKEN + 512) for p in prompts)
    return total + len(cfg.eval.tasks) * (cfg.eval.task_examples or 1000) * TASK_EXAMPLE


def run_footprint(cfg: RunConfig, n_train: int, prompts: Sequence[str]) -> RunFootprint:
    """The run's bytes (see the module's docstring for what is counted)."""
    steps = train_steps(cfg, n_train)
    live, kept = _checkpoints(cfg, steps)
    tensors = lora_tensors(cfg)
    files = _files(cfg, steps, prompts)
    if tensors is None:
        return RunFootprint(0, 0, files, live, kept, shape_known=False)
    weights = 4 * sum(tensors) + PER_TENSOR * len(tensors)  # fp32 safetensors
    trace = 8 * sum(tensors) if cfg.diagnostics.optimizer_trace else 0  # shadow m and v, fp32
    checkpoint = (weights + _optimizer_bytes(cfg, tensors) + trace + PER_TENSOR * len(tensors)
                  + CHECKPOINT_FIXED + PER_STEP_STATE * steps)
    return RunFootprint(weights + 16 * KIB, checkpoint, files, live, kept, shape_known=True)


def study_bytes(runs: Sequence[RunFootprint], at_once: int) -> int:
    """Every run's files once finished, plus what the ``at_once`` largest hold beyond them while training."""
    extra = sorted((r.peak - r.after for r in runs), reverse=True)[:max(at_once, 1)]
    return sum(r.after for r in runs) + sum(extra)


def check_fits(configs: Sequence[RunConfig], at_once: int, n_train: Callable[[RunConfig], int],
               prompts: Callable[[RunConfig], Sequence[str]], finished: Callable[[RunConfig], bool]) -> None:
    """Refuse, in one line, a study whose runs still to do cannot fit their results_dir's filesystem.

    Raises:
        ConfigError: the estimate exceeds the free space (it names both, and what it counts).
    """
    by_mount: dict[Path, list[RunConfig]] = {}
    for cfg in configs:
        if not finished(cfg):
            by_mount.setdefault(storage.mount_point(Path(cfg.results_dir)), []).append(cfg)
    for mount, todo in by_mount.items():
        runs = [run_footprint(cfg, n_train(cfg), prompts(cfg)) for cfg in todo]
        need = study_bytes(runs, at_once)
        free, _ = storage.usage(Path(todo[0].results_dir))
        if need > free:
            raise ConfigError(_refusal(todo[0].results_dir, mount, free, need, runs, min(at_once, len(runs))))


def _refusal(results_dir: str, mount: Path, free: int, need: int, runs: Sequence[RunFootprint], at_once: int) -> str:
    biggest = max(runs, key=lambda r: r.peak)
    unknown = "" if all(r.shape_known for r in runs) else (
        " (adapters and checkpoints not counted: the model's config.json is not on this machine)")
    live = (f"; up to {biggest.live_checkpoints} checkpoints of {storage.size_text(biggest.checkpoint)} each "
            f"while a run trains, {at_once} run(s) at a time") if biggest.live_checkpoints else ""
    return (f"results_dir={results_dir} cannot hold this study: about {storage.size_text(need)} needed "
            f"({len(runs)} run(s) to do, up to {storage.size_text(max(r.after for r in runs))} each once finished: "
            f"adapter, loss curve, generations, summaries and logs{live}){unknown}, and its filesystem {mount} "
            f"has {storage.size_text(free)} free; free space there or set results_dir= to a larger filesystem")
