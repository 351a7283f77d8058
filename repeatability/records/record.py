"""A trial's record assembled from what it measured (:func:`fill_results`), and the summary's words:
its one-paragraph headline, read from the typed record (:class:`repeatability.records.summary.Summary`)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from repeatability.records import run_setup as R
from repeatability.records import summary as S
from repeatability.records.config import RunConfig
from repeatability.records.metrics import NAME as N
from repeatability.records.schema import ABSENT
from repeatability.trial.evaluate import PERPLEXITY_DEFINITION

if TYPE_CHECKING:  # the trial's live objects, read here and never kept
    import torch

    from repeatability.trial.stage_outputs import Built, Prepared
    from repeatability.trial.train import TrainLog


# what the summary keeps of the base model's cached scores (the cache also has its held-out NLL and counts)
BASE_METRICS = (N.base_perplexity_token_weighted, N.base_perplexity_mean_per_sequence, N.base_perplexity_repeats,
                N.base_perplexity_repeat_spread)


def _g(value: float | None) -> str:
    """A number for the headline; absent (e.g. ``eval.base_perplexity=false``) or null reads ``nan``."""
    return f"{math.nan if value is None or value is ABSENT else value:.4g}"


def _base_words(base: float | None) -> str:
    if base is None or base is ABSENT:
        return "(base model not scored: eval.base_perplexity=false)"
    return f"vs {_g(base)} for the base model"


def _state(s: S.Summary) -> str:
    eff = s.optimizer.effective
    if eff.bits != 8:
        return "32-bit Adam state"
    state = (f"8-bit Adam state on {100 * eff.state_8bit_param_fraction:.1f}% of the trainable parameters "
             f"(tensors under min_8bit_size={s.optimizer.requested.min_8bit_size} elements keep 32-bit)")
    maps = s.optimizer.state_maps.name if s.optimizer.state_maps else None
    return state + (f", state maps {maps}" if maps else "")


def _precision(s: S.Summary) -> str:
    prec = s.precision
    if prec is not None and prec.grad_scaler:
        return f"fp16 autocast with a grad scaler ({prec.scaler_skipped_steps} steps skipped)"
    return f"mixed precision {prec.mixed_precision if prec is not None else 'no'}"


def headline(s: S.Summary) -> str:
    """The run in one paragraph of plain words (stored in the summary for readers)."""
    cell, m, eff, dev = s.cell, s.metrics, s.optimizer.effective, s.device
    paging = ("paging in effect" if eff.paging_effective else
              f"paging {'requested but not in effect' if eff.paging_requested else 'off'}")
    quant = "NF4 4-bit base" if dev.quantization.load_in_4bit else "unquantized base"
    return (f"Trial {s.trial} of {cell.model} x {cell.dataset} x {cell.optim}"
            f"{' (' + cell.variant + ')' if cell.variant else ''}: {s.status} after {m.steps} steps. "
            f"Held-out perplexity {_g(m.perplexity_token_weighted)} (token-weighted; "
            f"{_g(m.perplexity_mean_per_sequence)} as the mean of per-sequence perplexities) "
            f"{_base_words(m.base_perplexity_token_weighted)}, on "
            f"{m.heldout_sequences or 0} held-out examples. Optimizer {eff.class_.rsplit('.', 1)[-1]} "
            f"({eff.class_.split('.')[0]}) with {_state(s)}, {paging}. {dev.type.upper()} ({dev.name}), "
            f"{dev.compute_dtype} compute, {_precision(s)}, {quant}. Seeds: LoRA init {s.seeds.lora_init}, data order "
            f"{s.seeds.data_order}, dropout {s.seeds.dropout} (policy {s.seeds.policy}).")


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
            "n_params_note": "parameter elements as stored: a 4-bit weight counts as half its size (2 per byte)", "n_trainable_params": trainable,
            "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
                     "targets": cfg.lora.targets, "target_modules": list(targets)}}
