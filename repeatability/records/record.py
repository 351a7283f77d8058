"""The summary's words: a run's one-paragraph headline, read from the typed record
(:class:`repeatability.records.summary.Summary`). The record itself is filled by the trial
(:func:`repeatability.trial.results.fill_results`)."""

from __future__ import annotations

import math

from repeatability.records import summary as S
from repeatability.records.schema import ABSENT


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
