"""Training through the HF Trainer with the optimizer class built here, step logging,
divergence detection, and a read-back of the optimizer state that really ran."""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from repeatability.config.cell import OptimConfig
from repeatability.config.run import DiagnosticsConfig, EvalConfig, TrainConfig
from repeatability.records import artifacts, checkpoint_files, storage
from repeatability.records.tracking import TrackerRun
from repeatability.trial import data, optimtrace, qmaps, stopping
from repeatability.trial.seeding import Seeds

log = logging.getLogger(__name__)

# what the summary's `neftune.scope` says (transformers.integrations.neftune: noise only when module.training)
NEFTUNE_SCOPE = ("training steps only: the Trainer adds the noise through a forward hook on the input embeddings "
                 "that acts in train mode and removes it when training ends; validation, held-out scoring, "
                 "tasks and generations see none")


def _torch_adamw(cfg: OptimConfig, common: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    return torch.optim.AdamW, common


def _bnb_adamw(cfg: OptimConfig, common: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    import bitsandbytes as bnb

    return bnb.optim.AdamW, {
        **common, "optim_bits": cfg.optim_bits, "is_paged": cfg.is_paged, "min_8bit_size": cfg.min_8bit_size,
    }


# ``optim.impl`` → the optimizer class and its arguments, given the arguments every AdamW takes. The
# choices are declared in repeatability.config.cell.OPTIM_CLASSES (tests/test_declarations.py
# checks both agree); what ran is read back from the optimizer after training (effective_optimizer).
OPTIMIZERS: dict[str, Callable[[OptimConfig, dict[str, Any]], tuple[type, dict[str, Any]]]] = {
    "bnb_adamw": _bnb_adamw,
    "torch_adamw": _torch_adamw,
}


def optimizer_class_and_kwargs(cfg: OptimConfig, lr: float) -> tuple[type, dict[str, Any]]:
    """The real optimizer class and its arguments (bitsandbytes AdamW, or torch AdamW)."""
    common = {"lr": lr, "betas": tuple(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    return OPTIMIZERS[cfg.impl](cfg, common)


def effective_optimizer(optimizer: Any, requested: OptimConfig, device: str) -> dict[str, Any]:
    """What the optimizer really holds after training: class, state precision, paging.

    bitsandbytes keeps 32-bit state for tensors under ``min_8bit_size`` even in its 8-bit
    optimizer, and does not page on CPU (it warns and falls back), so both are read here from
    the state tensors rather than assumed from the config.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    dtypes: dict[str, int] = {}
    n_tensors = n_params = n8_tensors = n8_params = 0
    paged = False
    for group in inner.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                continue
            n_tensors += 1
            n_params += p.numel()
            state = inner.state.get(p, {})
            tensors = [v for k, v in state.items()
                       if torch.is_tensor(v) and k in ("state1", "state2", "exp_avg", "exp_avg_sq")]
            for t in tensors:
                dtypes[str(t.dtype).replace("torch.", "")] = dtypes.get(str(t.dtype).replace("torch.", ""), 0) + 1
                paged = paged or bool(getattr(t, "is_paged", False))
            if any(t.dtype == torch.uint8 for t in tensors):
                n8_tensors += 1
                n8_params += p.numel()
    note = ""
    if requested.is_paged and not paged:
        note = ("paging requested but not in effect: bitsandbytes does not page on CPU"
                if device == "cpu" else "paging requested but no state tensor is paged")
    return {
        "class": f"{type(inner).__module__}.{type(inner).__qualname__}",
        "bits": 8 if n8_tensors else 32,
        "paging_requested": requested.is_paged,
        "paging_effective": paged,
        "paging_note": note,
        "n_param_tensors": n_tensors,
        "n_params": n_params,
        "state_8bit_tensors": n8_tensors,
        "state_8bit_params": n8_params,
        "state_8bit_param_fraction": (n8_params / n_params) if n_params else 0.0,
        "state_dtypes": dtypes,
    }


@dataclass
class TrainLog:
    """What the training loop saw: the loss curve rows, step times, divergence."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    divergence: dict[str, Any] | None = None
    steps: int = 0
    skipped_steps: list[int] = field(default_factory=list)  # optimizer steps the grad scaler skipped
    nonfinite_streak: int = 0  # consecutive logged steps with a non-finite loss (grad scaler runs)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # {step, seconds, bytes} per save
    trace: optimtrace.OptimizerTrace | None = field(default=None, repr=False)  # diagnostics.optimizer_trace
    real_tokens: int = 0  # tokens of the training batches (padding excluded)
    token_slots: int = 0  # token positions the training forwards computed (padding included)

    def token_efficiency(self) -> float:
        """Real tokens over token slots of the training batches (1.0 without padding)."""
        return self.real_tokens / self.token_slots if self.token_slots else math.nan

    def resume_state(self) -> dict[str, Any]:
        """What a checkpoint must carry besides the Trainer's own files to continue exactly
        (the optimizer trace carries its own state: optimtrace.STATE_FILE)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "trace"}

    @classmethod
    def from_resume_state(cls, state: dict[str, Any]) -> TrainLog:
        rows = [{k: artifacts.as_float(v) if k in ("loss", "learning_rate", "grad_norm") and isinstance(v, str) else v
                 for k, v in r.items()} for r in state["rows"]]
        return cls(**{**state, "rows": rows})


# With a grad scaler (fp16), a non-finite loss or gradient is what the scaler handles: it skips
# the step and lowers the scale. A run is called diverged only when the loss stays non-finite
# for this many consecutive steps (the scaler is then no longer recovering).
SCALER_NONFINITE_LIMIT = 10


class LoggingCallback(TrainerCallback):
    """Records every log line, stops on a non-finite loss, and reports progress with an ETA."""

    def __init__(self, record: TrainLog, label: str, state_maps: str = "current", scaler: bool = False):
        self.record, self.label, self.state_maps, self.scaler = record, label, state_maps, scaler
        # a resumed run continues the elapsed clock of its loss rows
        offset = record.rows[-1]["elapsed_s"] if record.rows else 0.0
        self.start = time.perf_counter() - offset
        self.last = self.last_event = time.perf_counter()
        self.skipped_now = False

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if self.state_maps == "current":
            return
        if qmaps.has_state(optimizer):
            # resumed: the checkpoint's 8-bit states carry their maps (qmap1/qmap2); check them
            found = qmaps.maps_in_force(optimizer, self.state_maps)["name"]
            if found != self.state_maps:
                raise RuntimeError(f"checkpoint holds 8-bit state maps {found!r}, the run asks for {self.state_maps!r}")
            return
        qmaps.install_maps(optimizer, self.state_maps)  # before the first step creates the 8-bit states
        log.info("%s 8-bit state maps: %s", self.label, self.state_maps)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # validation and checkpoint writes run between two step ends: keep them out of the
        # step times (their own costs are the loss rows' clock and ``checkpoints``)
        self.last = self.last_event = time.perf_counter()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer wrote checkpoint-<step>/: add the harness's state, which marks it complete."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        self.record.checkpoints.append({"step": state.global_step, "bytes": size,
                                        "seconds": round(time.perf_counter() - self.last_event, 3)})
        checkpoint_files.write_resume_state(folder, self.record.resume_state())
        log.info("%s checkpoint at step %d (%.1f MB)", self.label, state.global_step, size / 2**20)
        self.last = time.perf_counter()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.skipped_now = bool(getattr(optimizer, "step_was_skipped", False))
        if self.skipped_now:
            self.record.skipped_steps.append(state.global_step + 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.record.step_seconds.append(now - self.last)
        self.last = now
        self.record.steps = state.global_step
        if stopping.requested() is not None:  # the launcher asked the job to end (SLURM): checkpoint this step, stop
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        self.last_event = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        base = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(elapsed, 3)}
        if "loss" in logs:
            loss = float(logs["loss"])
            self.record.rows.append({**base, "split": "train", "loss": loss,
                                     "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")})
            self._check_divergence(loss, logs.get("grad_norm"), state.global_step, control)
            done, total = state.global_step, max(state.max_steps, 1)
            eta = elapsed / max(done, 1) * (total - done)
            log.info("%s step %d/%d loss %.4f grad_norm %s eta %.0fs", self.label, done, total, loss,
                     f"{logs.get('grad_norm', float('nan')):.3g}", eta)
        if "eval_loss" in logs:
            self.record.rows.append({**base, "split": "val", "loss": float(logs["eval_loss"])})

    def _check_divergence(self, loss: float, grad_norm: float | None, step: int, control: Any) -> None:
        """Non-finite loss or gradient: diverged at once, or, under a grad scaler, after
        ``SCALER_NONFINITE_LIMIT`` consecutive non-finite losses (a skipped step is not a blow-up)."""
        bad = "training loss" if not math.isfinite(loss) else (
            "gradient norm" if grad_norm is not None and not math.isfinite(grad_norm) else None)
        if self.scaler:
            self.record.nonfinite_streak = self.record.nonfinite_streak + 1 if not math.isfinite(loss) else 0
            if self.record.nonfinite_streak < SCALER_NONFINITE_LIMIT:
                return
            bad = f"training loss ({SCALER_NONFINITE_LIMIT} consecutive steps under the grad scaler)"
        if bad and self.record.divergence is None:
            self.record.divergence = {"reason": f"non-finite {bad}", "step": step, "last_loss": loss}
            control.should_training_stop = True


class TallyTrainer(Trainer):
    """The HF Trainer, counting real tokens and token slots of every training batch into ``record``
    (the collator cannot tell training batches from the validation batches it also builds)."""

    record: TrainLog

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint save, a full or failing filesystem said as one
        :class:`~repeatability.records.storage.StorageFault` naming the checkpoint (torch.save
        itself raises ``RuntimeError: ... unexpected pos``)."""
        with storage.writing(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"):
            super()._save_checkpoint(model, trial)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """An epoch of steps, none when the run resumed from a checkpoint at its last step (a
        save that failed after training): the Trainer would take one step past ``max_steps``
        before checking, and the adapter would no longer be the uninterrupted run's."""
        if self.state.global_step >= self.state.max_steps > 0:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        real, slots = data.token_counts(inputs)
        self.record.real_tokens += real
        self.record.token_slots += slots
        return super().training_step(model, inputs, num_items_in_batch)


def enable_cpu_fp16(trainer: Trainer) -> None:
    """fp16 autocast and a grad scaler on CPU, which torch supports and accelerate skips.

    accelerate 1.x turns ``mixed_precision="fp16"`` into nothing on CPU (``native_amp`` stays
    False and no scaler is made: the Trainer would silently train in the compute dtype). torch
    >= 2.3 has CPU fp16 autocast and ``torch.amp.GradScaler("cpu")``; setting both on the
    accelerator before ``train()`` prepares the optimizer makes the Trainer's own code paths
    (``accelerator.autocast``, ``backward`` with scaling, unscale before clipping, skipped
    steps) run as they do on CUDA.
    """
    acc = trainer.accelerator
    acc.native_amp = True
    acc.scaler = torch.amp.GradScaler("cpu")


def precision_record(trainer: Trainer, mixed: str, record: TrainLog) -> dict[str, Any]:
    """What ran: autocast mode, whether a grad scaler ran, skipped steps and the final scale."""
    acc = trainer.accelerator
    scaler = acc.scaler if acc.scaler is not None and acc.scaler.is_enabled() else None
    return {"mixed_precision": mixed, "autocast": bool(acc.native_amp), "grad_scaler": scaler is not None,
            "scaler_skipped_steps": len(record.skipped_steps), "scaler_skipped_at": record.skipped_steps[:100],
            "final_loss_scale": float(scaler.get_scale()) if scaler is not None else None}


def _training_args(cfg: TrainConfig, seeds: Seeds, device: str, mixed: str, checkpoints: Path,
                   eval_batch_size: int, has_val: bool, report_to: list[str] | None = None,
                   run_name: str | None = None) -> TrainingArguments:
    """The Trainer's arguments; its ``output_dir`` holds nothing but checkpoints (no final
    save). ``report_to`` names the tracker whose callback the Trainer adds (repeatability.records.tracking
    points it at the study); ``run_name`` is the tracker's run name."""
    return TrainingArguments(
        output_dir=str(checkpoints), report_to=list(report_to or []), run_name=run_name, disable_tqdm=True,
        # checkpoint-<step>/ every k steps; the last two are kept, so a kill during a save
        # still leaves a complete one (RESUME_STATE is written after the Trainer's files)
        save_strategy="steps" if cfg.checkpoint_every else "no", save_steps=cfg.checkpoint_every or None,
        save_total_limit=2,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
        # a float below 1 is a ratio of all steps in transformers 5 (it has no warmup_ratio)
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio or cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        logging_strategy="steps", logging_steps=1, logging_nan_inf_filter=False,  # keep NaN visible
        eval_strategy="steps" if cfg.eval_every and has_val else "no",
        eval_steps=cfg.eval_every or None,
        seed=seeds.dropout, data_seed=seeds.data_order,  # dropout RNG / sampler order
        use_cpu=device == "cpu", fp16=mixed == "fp16", bf16=mixed == "bf16",
        dataloader_num_workers=0, remove_unused_columns=False,
        **({"gradient_checkpointing": True} if cfg.gradient_checkpointing else {}),
        # NEFTune: the Trainer's own hook on the input embeddings, active in train mode only
        **({"neftune_noise_alpha": cfg.neftune_noise_alpha} if cfg.neftune_noise_alpha is not None else {}),
    )


def train(model: Any, train_ds: Any, val_ds: Any, collator: Any, cfg: TrainConfig, optim: OptimConfig,
          eval_cfg: EvalConfig, diagnostics: DiagnosticsConfig, seeds: Seeds, device: str, mixed: str,
          label: str, checkpoints: Path, resume_from: Path | None = None,
          tracker: TrackerRun | None = None) -> tuple[TrainLog, dict[str, Any], dict[str, Any]]:
    """Fine-tune ``model`` in place, checkpointing into ``checkpoints`` and continuing from
    ``resume_from`` if given; return the training record (with its optimizer trace when
    ``diagnostics.optimizer_trace``), the effective optimizer (with the 8-bit maps read back from
    its state) and the precision that ran.

    The config groups come whole; of ``eval_cfg`` only the batch size of the validation passes
    is read. The rest is what the run resolved: ``seeds``, ``device``, ``mixed`` (the autocast
    mode), ``label`` (the log lines' prefix) and ``tracker`` (the Trainer's ``report_to`` and
    ``run_name``; none without one)."""
    record = TrainLog.from_resume_state(checkpoint_files.read_resume_state(resume_from)) if resume_from else TrainLog()
    args = _training_args(cfg, seeds, device, mixed, checkpoints, eval_cfg.batch_size, len(val_ds) > 0,
                          tracker.report_to if tracker else [], tracker.run_name if tracker else None)
    trace_every = diagnostics.optimizer_trace_every if diagnostics.optimizer_trace else 0
    # before the logger: see its doc
    tracer = [optimtrace.TraceCallback(resume_from, trace_every)] if trace_every else []
    trainer = TallyTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds if len(val_ds) else None,
        data_collator=collator,
        callbacks=[*tracer, LoggingCallback(record, label, optim.state_maps, scaler=mixed == "fp16")],
        optimizer_cls_and_kwargs=optimizer_class_and_kwargs(optim, cfg.lr),
    )
    trainer.record = record
    trainer.remove_callback(PrinterCallback)  # our callback logs each step (and an ETA) instead
    if mixed == "fp16" and device == "cpu":
        enable_cpu_fp16(trainer)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    signum = stopping.requested()
    if signum is not None and record.checkpoints and record.checkpoints[-1]["step"] == trainer.state.global_step:
        raise stopping.Preempted(trainer.state.global_step, signum)
    record.trace = tracer[0].trace if tracer else None
    effective = effective_optimizer(trainer.optimizer, optim, device)
    effective["state_maps"] = qmaps.maps_in_force(trainer.optimizer, optim.state_maps)
    precision = precision_record(trainer, mixed, record)
    return record, effective, precision


def step_time_stats(record: TrainLog) -> dict[str, float]:
    times = record.step_seconds[1:] or record.step_seconds  # first step includes warm-up
    if not times:
        return {"step_s_mean": math.nan, "step_s_median": math.nan}
    return {"step_s_mean": statistics.fmean(times), "step_s_median": statistics.median(times)}
