"""Optimizer trace (``diagnostics.optimizer_trace=true``): what the real optimizer did to the
LoRA parameters at each step, beside what exact 32-bit Adam would have done with the same
gradients.

A *shadow* of AdamW in fp32 (its own first and second moments, the same betas, eps, weight
decay and learning rate, read from the optimizer's param groups at each step) is fed the very
gradients the optimizer's ``step`` receives: the hooks sit on the optimizer itself
(``torch.optim.Optimizer.register_step_pre_hook``/``register_step_post_hook``), so the
gradients are already unscaled and clipped, and a step the fp16 grad scaler skips never
reaches them. The shadow is never applied. Per step and per module kind (``q_proj``,
``k_proj`` ..., the module a LoRA matrix belongs to) plus ``all``, a row records:

- ``applied_update_norm``: L2 norm of the parameters' change over the step (after - before);
- ``shadow_update_norm``: L2 norm of the shadow's update; ``update_inflation`` = applied / shadow;
- ``v_ratio_median/p99/max``: quantiles of the element-wise ratio stored second moment /
  shadow second moment (the stored one dequantized from the 8-bit codes with the block's
  absmax and the map in force; elements whose shadow moment is 0 are left out);
- ``v_top_code_fraction``: share of 8-bit second-moment codes at the map's largest value
  (empty for 32-bit state).

With ``diagnostics.optimizer_trace_every=k`` a row is written at the first optimizer step and every
k-th; the shadow's moments still take every gradient, so a traced step's row equals k=1's.

The shadow's moments and the rows so far travel in checkpoints, so a resumed run's trace is the
uninterrupted run's (``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from repeatability.records import storage

ALL = "all"
BLOCKSIZE = 256  # bitsandbytes' blockwise 8-bit optimizer state: one absmax per 256 elements
COLUMNS = ("step", "optimizer_step", "module_kind", "n_params", "n_8bit_params", "lr", "bias_correction2",
           "applied_update_norm", "shadow_update_norm", "update_inflation",
           "v_ratio_median", "v_ratio_p99", "v_ratio_max", "v_top_code_fraction")


def module_kind(name: str) -> str:
    """The module a LoRA parameter belongs to: ``...self_attn.q_proj.lora_A.default.weight`` ->
    ``q_proj`` (any architecture: the name part before ``lora_A``/``lora_B``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_") and i > 0:
            return parts[i - 1]
    return parts[-2] if len(parts) > 1 else name


@dataclass
class _Tally:
    """One module kind's sums over a step."""

    applied_sq: float = 0.0
    shadow_sq: float = 0.0
    n: int = 0
    n8: int = 0
    top: int = 0
    ratios: list[np.ndarray] = field(default_factory=list)


def stored_second_moment(state: dict[str, Any]) -> tuple[torch.Tensor | None, int | None]:
    """The optimizer's second moment as the next step will read it, and, for 8-bit state, the
    number of codes at the map's top value. ``(None, None)`` when the state holds none."""
    if "state2" in state and torch.is_tensor(state["state2"]):
        s2 = state["state2"]
        if s2.dtype == torch.uint8:
            qmap, absmax = state["qmap2"], state["absmax2"]
            v = torch.ops.bitsandbytes.dequantize_blockwise(s2, absmax, qmap, BLOCKSIZE, torch.float32)
            return v, int((s2 == int(torch.argmax(qmap))).sum())
        return s2.float(), None
    if torch.is_tensor(state.get("exp_avg_sq")):  # torch AdamW
        return state["exp_avg_sq"].float(), None
    return None, None


class OptimizerTrace:
    """The shadow AdamW and the per-step rows; :meth:`attach` hooks it onto an optimizer."""

    def __init__(self, named_params: list[tuple[str, torch.Tensor]], every: int = 1):
        self.kind = {p: module_kind(n) for n, p in named_params if p.requires_grad}
        self.kinds = sorted(set(self.kind.values()))
        self.order = [n for n, p in named_params if p.requires_grad]
        self.by_name = {n: p for n, p in named_params if p.requires_grad}
        self.m: dict[torch.Tensor, torch.Tensor] = {}
        self.v: dict[torch.Tensor, torch.Tensor] = {}
        self.t = 0
        self.every = every  # a row every k-th optimizer step and at the first; the shadow takes every step
        self.rows: list[dict[str, Any]] = []
        self.global_step = 0
        self.seconds = 0.0
        self._before: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = {}

    def attach(self, optimizer: Any) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        inner.register_step_pre_hook(lambda opt, args, kwargs: self._before_step(opt))
        inner.register_step_post_hook(lambda opt, args, kwargs: self._after_step(opt))

    def traced(self, t: int) -> bool:
        """Whether optimizer step ``t`` (1-based) gets a row."""
        return t == 1 or t % self.every == 0

    @torch.no_grad()
    def _before_step(self, opt: Any) -> None:
        start = time.perf_counter()
        self._before = {}
        self.t += 1
        for group in opt.param_groups:
            hyper = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}
            for p in group["params"]:
                if p in self.kind and p.grad is not None:
                    if self.traced(self.t):
                        self._before[p] = (p.detach().float().clone(), p.grad.detach().float().clone(), hyper)
                    else:  # an untraced step: the shadow's moments take the gradient, nothing else is computed
                        self._shadow_moments(p, p.grad.detach().float(), *hyper["betas"][:2])
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def _after_step(self, opt: Any) -> None:
        if not self._before:
            return
        start = time.perf_counter()
        tallies = {k: _Tally() for k in [*self.kinds, ALL]}
        lr = bc2 = math.nan
        for p, (before, grad, hyper) in self._before.items():
            lr, (beta1, beta2) = float(hyper["lr"]), hyper["betas"][:2]
            bc2 = 1.0 - beta2 ** self.t
            shadow = self._shadow_update(p, before, grad, lr, beta1, beta2, float(hyper["eps"]),
                                         float(hyper["weight_decay"]))
            applied = p.detach().float() - before
            stored, top = stored_second_moment(opt.state.get(p, {}))
            ratio = None
            if stored is not None:
                shadow_v = self.v[p].reshape(-1)
                keep = shadow_v > 0
                ratio = (stored.reshape(-1)[keep] / shadow_v[keep]).numpy()
            applied_sq = float(torch.dot(applied.reshape(-1), applied.reshape(-1)))
            shadow_sq = float(torch.dot(shadow.reshape(-1), shadow.reshape(-1)))
            for tally in (tallies[self.kind[p]], tallies[ALL]):
                tally.applied_sq += applied_sq
                tally.shadow_sq += shadow_sq
                tally.n += p.numel()
                if top is not None:
                    tally.n8 += p.numel()
                    tally.top += top
                if ratio is not None:
                    tally.ratios.append(ratio)
        self.rows += [self._row(kind, tally, lr, bc2) for kind, tally in tallies.items() if tally.n]
        self._before = {}
        self.seconds += time.perf_counter() - start

    def _shadow_update(self, p: torch.Tensor, before: torch.Tensor, grad: torch.Tensor, lr: float,
                       beta1: float, beta2: float, eps: float, weight_decay: float) -> torch.Tensor:
        """One step of exact AdamW on the shadow moments; returns the update it would apply."""
        m, v = self._shadow_moments(p, grad, beta1, beta2)
        denom = (v / (1.0 - beta2 ** self.t)).sqrt_().add_(eps)
        update = (m / (1.0 - beta1 ** self.t)).div_(denom).mul_(-lr)
        if weight_decay:
            update.add_(before, alpha=-lr * weight_decay)
        return update

    def _shadow_moments(self, p: torch.Tensor, grad: torch.Tensor, beta1: float,
                        beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact AdamW's moments after this step's gradient."""
        m = self.m.setdefault(p, torch.zeros_like(grad))
        v = self.v.setdefault(p, torch.zeros_like(grad))
        m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        return m, v

    def _row(self, kind: str, tally: _Tally, lr: float, bc2: float) -> dict[str, Any]:
        applied, shadow = math.sqrt(tally.applied_sq), math.sqrt(tally.shadow_sq)
        ratios = np.concatenate(tally.ratios) if tally.ratios else np.empty(0, dtype=np.float32)
        median, p99 = (np.quantile(ratios, [0.5, 0.99]).tolist() if ratios.size else [math.nan, math.nan])
        return {"step": self.global_step, "optimizer_step": self.t, "module_kind": kind, "n_params": tally.n,
                "n_8bit_params": tally.n8, "lr": lr, "bias_correction2": bc2,
                "applied_update_norm": applied, "shadow_update_norm": shadow,
                "update_inflation": applied / shadow if shadow > 0 else math.nan,
                "v_ratio_median": median, "v_ratio_p99": p99,
                "v_ratio_max": float(ratios.max()) if ratios.size else math.nan,
                "v_top_code_fraction": tally.top / tally.n8 if tally.n8 else math.nan}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint carries: the shadow moments by parameter name, the step, the rows."""
        name = {p: n for n, p in self.by_name.items()}
        return {"t": self.t, "rows": self.rows, "seconds": self.seconds,
                "m": {name[p]: t for p, t in self.m.items()}, "v": {name[p]: t for p, t in self.v.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.rows, self.seconds = int(state["t"]), list(state["rows"]), float(state["seconds"])
        self.m = {self.by_name[n]: t.float() for n, t in state["m"].items()}
        self.v = {self.by_name[n]: t.float() for n, t in state["v"].items()}


def summarize(rows: list[dict[str, Any]], seconds: float, every: int = 1) -> dict[str, Any]:
    """The summary's ``optimizer_trace`` group: the overall rows at the first, last and worst step."""
    overall = [r for r in rows if r["module_kind"] == ALL]
    finite = [r["update_inflation"] for r in overall if math.isfinite(r["update_inflation"])]
    last = overall[-1] if overall else {}
    return {"file": "optimizer_trace.csv", "steps": len(overall),
            "kinds": sorted({r["module_kind"] for r in rows} - {ALL}),
            "update_inflation_last": last.get("update_inflation", math.nan),
            "update_inflation_max": max(finite) if finite else math.nan,
            "update_inflation_median": float(np.median(finite)) if finite else math.nan,
            "v_ratio_median_last": last.get("v_ratio_median", math.nan),
            "v_top_code_fraction_last": last.get("v_top_code_fraction", math.nan),
            "seconds": seconds, "every": every}


STATE_FILE = "optimizer_trace_state.pt"  # in a checkpoint folder, written before its resume state


class TraceCallback(TrainerCallback):
    """Hooks an :class:`OptimizerTrace` onto the Trainer's optimizer; carries it in checkpoints.

    Listed before the harness's logging callback, whose ``on_save`` marks a checkpoint complete:
    the trace's state is then already in it.
    """

    def __init__(self, resume_from: Path | None = None, every: int = 1):
        self.trace: OptimizerTrace | None = None
        self.resume_from = resume_from
        self.every = every

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.trace = OptimizerTrace(list(model.named_parameters()), self.every)
        if self.resume_from is not None:
            self.trace.load_state_dict(torch.load(self.resume_from / STATE_FILE, weights_only=True))
        self.trace.attach(optimizer)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trace is not None
        self.trace.global_step = state.global_step + 1

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trace is not None
        file = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        with storage.writing(file):
            torch.save(self.trace.state_dict(), file)
