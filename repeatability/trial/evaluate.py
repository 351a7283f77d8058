"""Held-out perplexity (two named definitions) and fixed-prompt generations."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from repeatability.records.metrics import NAME as N

log = logging.getLogger(__name__)


@dataclass
class Perplexity:
    token_weighted: float
    mean_per_sequence: float
    mean_token_nll: float
    tokens: int
    sequences: int

    def as_metrics(self, prefix: str = "") -> dict[str, float | int]:
        """The summary's ``metrics`` fields of this scoring; ``prefix`` (``base_``) keys the base
        model's (its cache file keeps all five; the summary keeps the perplexities)."""
        values = {N.perplexity_token_weighted: self.token_weighted,
                  N.perplexity_mean_per_sequence: self.mean_per_sequence,
                  N.heldout_mean_token_nll: self.mean_token_nll,
                  N.heldout_tokens: self.tokens,
                  N.heldout_sequences: self.sequences}
        return {prefix + key: value for key, value in values.items()}


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf


@torch.no_grad()
def sequence_nll(model: Any, ids: list[list[int]], pad_id: int, batch_size: int, device: str,
                 batching: str = "padded") -> list[tuple[float, int]]:
    """(sum of NLL, number of targets) per sequence, in input order.

    ``padded``: sequences batched by length, each batch padded to its longest (little padding).
    ``padding_free``: each batch of ``batch_size`` sequences concatenated into one row with
    position_ids restarting per sequence and no attention mask, which transformers' sdpa/eager
    masks turn into a block-diagonal causal mask (check it with
    ``modelling.check_packed_attention`` first). Both give the numbers of scoring one sequence
    at a time up to float rounding, deterministically for a given input.
    """
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(ids)
    score = _packed_chunk if batching == "padding_free" else _padded_chunk
    for start in range(0, len(order), batch_size):
        chunk_idx = order[start : start + batch_size]
        for idx, result in zip(chunk_idx, score(model, [ids[i] for i in chunk_idx], pad_id, device)):
            out[idx] = result
    return out


def _padded_chunk(model: Any, chunk: list[list[int]], pad_id: int, device: str) -> list[tuple[float, int]]:
    width = max(len(x) for x in chunk)
    inp = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(inp)
    for row, seq in enumerate(chunk):
        inp[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits.float()
    targets = inp[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    ).view(len(chunk), -1)
    valid = mask[:, 1:].to(device).bool()
    sums = (nll * valid).sum(dim=1).tolist()
    counts = valid.sum(dim=1).tolist()
    return [(float(s), int(n)) for s, n in zip(sums, counts)]


def _packed_chunk(model: Any, chunk: list[list[int]], pad_id: int, device: str) -> list[tuple[float, int]]:
    flat = torch.tensor([t for seq in chunk for t in seq], device=device)
    pos = torch.tensor([i for seq in chunk for i in range(len(seq))], device=device)
    logits = model(input_ids=flat[None], position_ids=pos[None]).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], flat[1:], reduction="none")
    out, start = [], 0
    for seq in chunk:  # position p predicts p+1; the prediction across a boundary is dropped
        out.append((float(nll[start : start + len(seq) - 1].sum()), len(seq) - 1))
        start += len(seq)
    return out


def perplexity(per_sequence: list[tuple[float, int]]) -> Perplexity:
    """Both definitions from per-sequence (NLL sum, token count)."""
    kept = [(s, n) for s, n in per_sequence if n > 0]
    total = sum(s for s, _ in kept)
    tokens = sum(n for _, n in kept)
    mean_nll = total / tokens if tokens else math.nan
    per_seq = [_safe_exp(s / n) for s, n in kept]
    return Perplexity(
        token_weighted=_safe_exp(mean_nll) if tokens else math.nan,
        mean_per_sequence=sum(per_seq) / len(per_seq) if per_seq else math.nan,
        mean_token_nll=mean_nll,
        tokens=tokens,
        sequences=len(kept),
    )


def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int, device: str,
                batching: str = "padded") -> Perplexity:
    """Perplexity of ``texts`` (already templated) under ``model``; usable from outside scripts."""
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return perplexity(sequence_nll(model, enc, tokenizer.pad_token_id, batch_size, device, batching))


CANARY_SEQUENCES = 8  # the first held-out sequences: fixed by the split seed, the same in every trial


def canary_fingerprint(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: str,
                       n: int = CANARY_SEQUENCES) -> dict[str, Any]:
    """The numerics fingerprint: mean NLL per target token of the first ``n`` of ``texts`` in one
    padded batch, in eval mode. Called before the first update, when LoRA's B matrices are zero, it
    depends on the weights, tokenizer, code and kernels but on none of the trial's seeds."""
    ids = tokenizer(texts[:n], add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    per_sequence = sequence_nll(model, ids, tokenizer.pad_token_id, max(len(ids), 1), device)
    tokens = sum(count for _, count in per_sequence)
    loss = sum(total for total, _ in per_sequence) / tokens if tokens else math.nan
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    return {"canary_loss": loss, "canary_loss_hex": float(loss).hex(), "canary_sequences": len(ids),
            "canary_tokens": tokens, "canary_ids_sha256": digest}


# --------------------------------------------------------------------------- generations

_LETTER_PATTERNS = (
    re.compile(r"[Aa]nswer\s*(?:is|:)?\s*\(?([A-D])\b"),
    re.compile(r"^\W*\(?([A-D])[\):.]"),
    re.compile(r"\b([A-D])\s*[:)]"),
    re.compile(r"^\s*([A-D])\b"),
)


def answer_letter(completion: str) -> str | None:
    """The A–D choice a completion commits to, or None (patterns tried most specific first)."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(completion.strip())
        if m:
            return m.group(1).upper()
    return None


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompt_text: str, *, sample: bool, seed: int | None,
             temperature: float, top_p: float, max_new_tokens: int, device: str) -> str:
    """Completion of ``prompt_text`` (new tokens only). Sampling is reseeded per call."""
    model.eval()
    ids = tokenizer(prompt_text, add_special_tokens=False, return_tensors="pt").to(device)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sample:
        assert seed is not None
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(**ids, **kwargs)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def run_generations(model: Any, tokenizer: Any, prompts: list[tuple[str, str]], eval_cfg: Any,
                    seed: int, multiple_choice: bool, device: str) -> list[dict[str, Any]]:
    """Generations for every fixed prompt: sampled (T/top-p; ``sample_repeats`` seeds from the
    generation seed on) and greedy. ``prompts`` holds (prompt as given, prompt as fed)."""
    rows = []
    modes: list[tuple[str, int | None, int]] = []
    if eval_cfg.sample:
        modes += [("sampled", (seed + k) % 2**31, k) for k in range(eval_cfg.sample_repeats)]
    if eval_cfg.greedy:
        modes.append(("greedy", None, 0))
    for index, (given, fed) in enumerate(prompts):
        for mode, mode_seed, k in modes:
            start = time.perf_counter()
            completion = generate(
                model, tokenizer, fed, sample=mode == "sampled", seed=mode_seed,
                temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                max_new_tokens=eval_cfg.max_new_tokens, device=device,
            )
            sampled = mode == "sampled"
            rows.append({
                "prompt_index": index, "prompt": given, "mode": mode, "sample_index": k, "seed": mode_seed,
                "temperature": eval_cfg.temperature if sampled else None,
                "top_p": eval_cfg.top_p if sampled else None,
                "max_new_tokens": eval_cfg.max_new_tokens,
                "completion": completion,
                "text": (given + completion) if not multiple_choice else completion,
                "answer_letter": answer_letter(completion) if multiple_choice else None,
                "seconds": round(time.perf_counter() - start, 3),
            })
    return rows
