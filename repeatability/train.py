"""Training through the HF Trainer with the optimizer class built here, step logging,
divergence detection, and a read-back of the optimizer state that really ran."""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from repeatability.config import OptimConfig, TrainConfig
from repeatability.seeding import Seeds

log = logging.getLogger(__name__)


def optimizer_class_and_kwargs(cfg: OptimConfig, lr: float) -> tuple[type, dict[str, Any]]:
    """The real optimizer class and its arguments (bitsandbytes AdamW, or torch AdamW)."""
    common = {"lr": lr, "betas": tuple(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.impl == "torch_adamw":
        return torch.optim.AdamW, common
    import bitsandbytes as bnb

    return bnb.optim.AdamW, {
        **common, "optim_bits": cfg.optim_bits, "is_paged": cfg.is_paged, "min_8bit_size": cfg.min_8bit_size,
    }


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
            tensors = [v for k, v in state.items() if torch.is_tensor(v) and k in ("state1", "state2", "exp_avg", "exp_avg_sq")]
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


class LoggingCallback(TrainerCallback):
    """Records every log line, stops on a non-finite loss, and reports progress with an ETA."""

    def __init__(self, record: TrainLog, label: str):
        self.record, self.label = record, label
        self.start = self.last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.record.step_seconds.append(now - self.last)
        self.last = now
        self.record.steps = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        elapsed = time.perf_counter() - self.start
        base = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(elapsed, 3)}
        if "loss" in logs:
            loss = float(logs["loss"])
            self.record.rows.append({**base, "split": "train", "loss": loss,
                                     "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")})
            grad_norm = logs.get("grad_norm")
            bad = "training loss" if not math.isfinite(loss) else (
                "gradient norm" if grad_norm is not None and not math.isfinite(grad_norm) else None)
            if bad and self.record.divergence is None:
                self.record.divergence = {"reason": f"non-finite {bad}", "step": state.global_step, "last_loss": loss}
                control.should_training_stop = True
            done, total = state.global_step, max(state.max_steps, 1)
            eta = elapsed / max(done, 1) * (total - done)
            log.info("%s step %d/%d loss %.4f grad_norm %s eta %.0fs", self.label, done, total, loss,
                     f"{logs.get('grad_norm', float('nan')):.3g}", eta)
        if "eval_loss" in logs:
            self.record.rows.append({**base, "split": "val", "loss": float(logs["eval_loss"])})


def train(model: Any, train_ds: Any, val_ds: Any, collator: Any, cfg: TrainConfig, optim: OptimConfig,
          seeds: Seeds, device: str, dtype: torch.dtype, label: str,
          eval_batch_size: int = 8) -> tuple[TrainLog, dict[str, Any]]:
    """Fine-tune ``model`` in place; return the training record and the effective optimizer."""
    record = TrainLog()
    with tempfile.TemporaryDirectory(prefix="repeatability-trainer-") as out:
        args = TrainingArguments(
            output_dir=out, save_strategy="no", report_to=[], disable_tqdm=True,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=eval_batch_size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
            # a float below 1 is a ratio of all steps in transformers 5 (it has no warmup_ratio)
            lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio or cfg.warmup_steps,
            max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
            logging_strategy="steps", logging_steps=1, logging_nan_inf_filter=False,  # keep NaN visible
            eval_strategy="steps" if cfg.eval_every and len(val_ds) else "no",
            eval_steps=cfg.eval_every or None,
            seed=seeds.dropout, data_seed=seeds.data_order,  # dropout RNG / sampler order
            use_cpu=device == "cpu", bf16=dtype == torch.bfloat16 and device == "cuda",
            dataloader_num_workers=0, remove_unused_columns=False,
            **({"gradient_checkpointing": True} if cfg.gradient_checkpointing else {}),
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds if len(val_ds) else None,
            data_collator=collator, callbacks=[LoggingCallback(record, label)],
            optimizer_cls_and_kwargs=optimizer_class_and_kwargs(optim, cfg.lr),
        )
        trainer.remove_callback(PrinterCallback)  # our callback logs each step (and an ETA) instead
        trainer.train()
        effective = effective_optimizer(trainer.optimizer, optim, device)
    return record, effective


def step_time_stats(record: TrainLog) -> dict[str, float]:
    times = record.step_seconds[1:] or record.step_seconds  # first step includes warm-up
    if not times:
        return {"step_s_mean": math.nan, "step_s_median": math.nan}
    return {"step_s_mean": statistics.fmean(times), "step_s_median": statistics.median(times)}
