"""A trial's record assembled from what it measured, while its model is still alive: the last
stage of :func:`repeatability.trial.pipeline.execute` (the headline: :mod:`repeatability.records.record`)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch

from repeatability.config.run import RunConfig
from repeatability.records import run_setup as R
from repeatability.records import summary as S
from repeatability.records.metrics import NAME as N
from repeatability.records.metrics import PERPLEXITY_DEFINITION
from repeatability.trial.stage_outputs import Built, Prepared
from repeatability.trial.train import TrainLog

# what the summary keeps of the base model's cached scores (the cache also has its held-out NLL and counts)
BASE_METRICS = (N.base_perplexity_token_weighted, N.base_perplexity_mean_per_sequence, N.base_perplexity_repeats,
                N.base_perplexity_repeat_spread)


def fill_results(summary: S.Summary, cfg: RunConfig, built: Built, prep: Prepared, record: TrainLog,
                 effective: dict[str, Any], metrics: dict[str, Any], device: str, device_name: str,
                 dtype: torch.dtype) -> None:
    """The summary groups read from a finished trial while its model is still alive: status and
    divergence, optimizer requested and effective, device, model, data, metrics."""
    divergence = record.divergence or _ppl_divergence(metrics, cfg.eval.ppl_overflow, record)
    summary.status = "diverged" if divergence else "complete"
    summary.divergence = S.part(S.Divergence, divergence, "divergence")
    summary.error = None
    summary.optimizer = S.part(R.Optimizer, {
        "requested": {**asdict(cfg.optim), "lr": cfg.train.lr},
        "effective": {k: v for k, v in effective.items() if k != "state_maps"},
        "state_maps": effective.get("state_maps")}, "optimizer")
    summary.device = S.part(R.Device, {
        "type": device, "name": device_name, "compute_dtype": str(dtype).replace("torch.", ""),
        "quantization": {k: v for k, v in asdict(cfg.quant).items() if k != "compute_dtype"},
        "n_4bit_layers": built.n_4bit_layers,
        "bnb_cpu_inference_repack": ("disabled: bitsandbytes' AVX512-BF16 repack breaks LoRA gradients after "
                                     "an eval pass; one fp32 dequantize path for training and scoring")
        if device == "cpu" and cfg.quant.load_in_4bit else "not applicable"}, "device")
    summary.model = S.part(R.Model, _model_info(cfg, built), "model")
    summary.data = S.part(R.Data, prep.info, "data")
    summary.metrics = S.part(S.Metrics, {
        **metrics, **{k: built.base[k] for k in BASE_METRICS if k in built.base},
        N.final_train_loss: _last(record.rows, "train"), N.final_val_loss: _last(record.rows, "val"),
        N.steps: record.steps}, "metrics")
    summary.perplexity_definition = PERPLEXITY_DEFINITION


def _ppl_divergence(metrics: dict[str, Any], limit: float, record: TrainLog) -> dict[str, Any] | None:
    ppl = metrics.get(N.perplexity_token_weighted, math.nan)
    if math.isfinite(ppl) and ppl <= limit:
        return None
    return {"reason": f"held-out perplexity {ppl} is not finite or exceeds eval.ppl_overflow={limit:g}",
            "step": record.steps, "last_loss": _last(record.rows, "train")}


def _last(rows: list[dict[str, Any]], split: str) -> float:
    values = [r["loss"] for r in rows if r["split"] == split]
    return values[-1] if values else math.nan


def _model_info(cfg: RunConfig, built: Built) -> dict[str, Any]:
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in built.model.parameters())
    targets = cfg.model.lora_targets_all if cfg.lora.targets == "all_linear" else cfg.model.lora_targets_attention
    return {"name": cfg.model.name, "source": cfg.model.source, "resolved": built.model_id,
            "architecture": cfg.model.architecture, "n_params": total,
            "n_params_note": "parameter elements as stored: a 4-bit weight counts as half its size (2 per byte)",
            "n_trainable_params": trainable,
            "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
                     "targets": cfg.lora.targets, "target_modules": list(targets)}}
