"""A synthetic ``variance-sources`` study with known answers, written through the contract.

One-factor-at-a-time half (``paged_adamw_8bit``, 3 trials per cell, rules as conf/vary/*):

- log perplexity = log 20 + offset: vary-nothing [0, 0, 0], vary-lora-init [−.1, 0, .1],
  vary-data-order [−.05, 0, .05], vary-dropout [−.02, 0, .02] → variances 0, .01, .0025, .0004;
- final train loss: nothing [3, 3, 3], lora_init [3, 3.1, 3.2] (variance .01), data_order
  [3, 3, 3.3] (.03), dropout [3, 3, 3.03] (.0003); validation loss = train + 0.2;
- adapters: layer 0 q_proj ΔW = s·e1·a(θ)ᵀ with a(θ) = (cos θ, sin θ, 0, …) and a layer 1
  v_proj ΔW = s·e2·e2ᵀ equal in every run (s = lora_alpha / r = 2, ||ΔW|| = s per module);
  θ per trial: nothing 0,0,0; lora_init 0,60,120°; data_order 0,0,90°; dropout 0,10,20°;
- each run samples both prompts 3 times (sample_index 0..2) exactly as greedy, and scored the
  base model 3 times with zero spread.

Crossed half: {paged_adamw_8bit, paged_adamw_32bit} × {quant-nf4, quant-none}, trials 1–2 with
shared per-trial seeds: log perplexity = log 20 + .3·[none] + .1·[8-bit] + .05·[trial 2]
+ .01·(± three-way contrast) → type-2 SS: optim .02, variant .18, trial .005, interaction 0,
residual .0008 (3 df), total .2058.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from analysis_fixtures import PROMPTS, seeds_for, write_run

from repeatability.config.run import SEED_SOURCES
from repeatability.records import artifacts

STUDY = "variance-sources"
MODEL, DATASET = "smollm2-135m", "quotes"
OFAT = {  # variant: (varied source or None, log-ppl offsets, train losses, θ in degrees)
    "vary-nothing": (None, [0, 0, 0], [3.0, 3.0, 3.0], [0, 0, 0]),
    "vary-lora-init": ("lora_init", [-0.1, 0, 0.1], [3.0, 3.1, 3.2], [0, 60, 120]),
    "vary-data-order": ("data_order", [-0.05, 0, 0.05], [3.0, 3.0, 3.3], [0, 0, 90]),
    "vary-dropout": ("dropout", [-0.02, 0, 0.02], [3.0, 3.0, 3.03], [0, 10, 20]),
}
PPL0 = 20.0
OFAT_CELLS = {v: artifacts.CellKey(MODEL, DATASET, "paged_adamw_8bit", v) for v in OFAT}
LORA_CONFIG = {"r": 2, "lora_alpha": 4}  # s = 2
SCALE = 2.0
Q_KEY = "base_model.model.model.layers.0.self_attn.q_proj"
V_KEY = "base_model.model.model.layers.1.self_attn.v_proj"


def ofat_seeds(source: str | None, trial: int) -> dict[str, Any]:
    """conf/vary: policy fixed; the varied source follows the trial, others one fixed seed."""
    values = {s: 11 + i for i, s in enumerate(SEED_SOURCES)}
    if source:
        values[source] = 500 + trial
    return {**values, "split": 42, "policy": "fixed",
            "rules": {s: "trial" if s == source else "fixed" for s in SEED_SOURCES}}


def lora_tensors(theta_deg: float, dim: int = 6) -> dict[str, np.ndarray]:
    """Two modules of rank 2: q_proj ΔW = s·e1·a(θ)ᵀ, v_proj ΔW = s·e2·e2ᵀ (fixed)."""
    theta = math.radians(theta_deg)
    a_q = np.zeros((2, dim), np.float32)
    a_q[0, :2] = [math.cos(theta), math.sin(theta)]
    b_q = np.zeros((dim, 2), np.float32)
    b_q[0, 0] = 1.0
    a_v = np.zeros((2, dim), np.float32)
    a_v[1, 1] = 1.0
    b_v = np.zeros((dim, 2), np.float32)
    b_v[1, 1] = 1.0
    return {f"{Q_KEY}.lora_A.weight": a_q, f"{Q_KEY}.lora_B.weight": b_q,
            f"{V_KEY}.lora_A.weight": a_v, f"{V_KEY}.lora_B.weight": b_v}


def sampled_generations(gen_seed: int, text: str = " be silenced.", k: int = 3) -> list[dict]:
    """Greedy plus K samples per prompt, every completion the same text."""
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows.append({"prompt_index": i, "prompt": prompt, "mode": "greedy", "sample_index": 0,
                     "seed": None, "temperature": None, "top_p": None, "max_new_tokens": 24,
                     "completion": text, "text": prompt + text, "answer_letter": None})
        rows += [{"prompt_index": i, "prompt": prompt, "mode": "sampled", "sample_index": j,
                  "seed": gen_seed + j, "temperature": 0.1, "top_p": 0.1, "max_new_tokens": 24,
                  "completion": text, "text": prompt + text, "answer_letter": None}
                 for j in range(k)]
    return rows


def _metrics(log_ppl: float, train_loss: float) -> dict[str, Any]:
    ppl = math.exp(log_ppl)
    return {"perplexity_token_weighted": ppl, "perplexity_mean_per_sequence": ppl * 1.5,
            "heldout_mean_token_nll": log_ppl, "final_train_loss": train_loss,
            "final_val_loss": train_loss + 0.2, "base_perplexity_repeats": [64.0, 64.0, 64.0],
            "base_perplexity_repeat_spread": 0.0}


def _write_ofat(results: Path) -> None:
    for variant, (source, offsets, losses, thetas) in OFAT.items():
        for trial, (offset, loss, theta) in enumerate(zip(offsets, losses, thetas), 1):
            seeds = ofat_seeds(source, trial)
            curve = [3.5 - 0.05 * i + (loss - 3.0) * i / 9 for i in range(10)]
            write_run(results, STUDY, OFAT_CELLS[variant], trial, losses=curve,
                      summary={"seeds": seeds,
                               "metrics": _metrics(math.log(PPL0) + offset, loss),
                               "model": {"lora": {"r": 2, "alpha": 4}}},
                      generations=sampled_generations(seeds["generation"]),
                      adapter=(lora_tensors(theta), LORA_CONFIG))


CROSSED_Y = {}  # (optim, quant, trial) → log perplexity
for _optim in ("paged_adamw_8bit", "paged_adamw_32bit"):
    for _quant in ("nf4", "none"):
        for _trial in (1, 2):
            _sign = ((1 if _optim.endswith("8bit") else -1) * (1 if _quant == "none" else -1)
                     * (1 if _trial == 2 else -1))
            CROSSED_Y[(_optim, _quant, _trial)] = (math.log(PPL0) + 0.3 * (_quant == "none")
                                                   + 0.1 * _optim.endswith("8bit")
                                                   + 0.05 * (_trial == 2) + 0.01 * _sign)


def _write_crossed(results: Path) -> None:
    for (optim, quant, trial), y in CROSSED_Y.items():
        cell = artifacts.CellKey(MODEL, DATASET, optim, f"quant-{quant}")
        loss = 3.0 + 0.1 * (quant == "none") + 0.02 * trial + 0.001 * optim.endswith("8bit")
        rng = np.random.default_rng(trial)
        tensors = {f"{Q_KEY}.lora_A.weight": rng.standard_normal((2, 6)).astype(np.float32),
                   f"{Q_KEY}.lora_B.weight": rng.standard_normal((6, 2)).astype(np.float32)}
        write_run(results, STUDY, cell, trial, summary={"seeds": seeds_for(trial),
                                                        "metrics": _metrics(y, loss)},
                  generations=sampled_generations(4000 + trial), adapter=(tensors, LORA_CONFIG))


def write_variance_sources_study(results: Path, crossed: bool = True) -> Path:
    """The study described in the module docstring (20 runs; 12 without ``crossed``)."""
    _write_ofat(results)
    if crossed:
        _write_crossed(results)
    return artifacts.study_dir(results, STUDY)
