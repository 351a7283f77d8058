"""``eval_dequant_cache``: evaluation with each 4-bit weight dequantized once vs per forward.

On the default study's model (SmolLM2-135M NF4 + LoRA r=8 all linear, an adapter with non-zero
B so it matters), rounds alternating which goes first:
- held-out scoring (``evaluate.score_texts``, padded batches of 16, max length 64) of the
  default study's held-out quotes: seconds without / with ``weight_cache.dequantized_4bit_weights``;
- greedy generation (``evaluate.generate``, the default study's prompts, ``eval.max_new_tokens``):
  new tokens per second without / with.
Both must give the same bits (checked here, and in tests/test_weight_cache.py).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")


def bench_evalcache(rounds: int, out: Path, examples: int = 64) -> dict[str, Any]:
    import torch
    from bench_common import config, fresh_model

    from repeatability.trial import evaluate, modelling, pipeline
    from repeatability.trial.weight_cache import dequantized_4bit_weights

    cfg = config([f"results_dir={out}", "study=bench-evalcache", f"eval.max_examples={examples}"])
    path = modelling.resolve_model(cfg.model, cfg.cache_dir)
    tok = modelling.load_tokenizer(path)
    prep = pipeline.prepare_data(cfg, tok, out / "bench-evalcache")
    model = fresh_model(cfg, path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    model.eval()

    def score() -> float:
        return evaluate.score_texts(model, tok, prep.heldout_texts, cfg.train.max_length, cfg.eval.batch_size,
                                    "cpu", cfg.eval.batching).token_weighted

    def generate() -> tuple[list[str], int]:
        texts = [evaluate.generate(model, tok, fed, sample=False, seed=None, temperature=cfg.eval.temperature,
                                   top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens, device="cpu")
                 for _, fed in prep.prompts]
        return texts, sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    times: dict[str, dict[bool, list[float]]] = {"score": {True: [], False: []}, "gen": {True: [], False: []}}
    tokens: dict[bool, int] = {}
    outputs: dict[bool, list[Any]] = {True: [], False: []}
    for r in range(rounds):
        for cached in ((False, True) if r % 2 == 0 else (True, False)):
            with dequantized_4bit_weights(model, enabled=cached):
                start = time.perf_counter()
                ppl = score()
                times["score"][cached].append(time.perf_counter() - start)
                start = time.perf_counter()
                texts, tokens[cached] = generate()
                times["gen"][cached].append(time.perf_counter() - start)
            outputs[cached].append((ppl.hex(), texts))
        log.info("round %d: scoring %.2fs / %.2fs, generation %.2fs / %.2fs (per forward / cached)", r + 1,
                 times["score"][False][-1], times["score"][True][-1], times["gen"][False][-1], times["gen"][True][-1])
    modelling.release_weights(model)
    score_s = {k: statistics.median(v) for k, v in times["score"].items()}
    gen_s = {k: statistics.median(v) for k, v in times["gen"].items()}
    return {"eval_dequant_cache": {
        "scoring_s": {"per_forward": round(score_s[False], 3), "cached": round(score_s[True], 3)},
        "scoring_speedup": round(score_s[False] / score_s[True], 3),
        "generation_tokens_per_s": {"per_forward": round(tokens[False] / gen_s[False], 2),
                                    "cached": round(tokens[True] / gen_s[True], 2)},
        "generation_speedup": round(gen_s[False] / gen_s[True], 3),
        "same_bits": outputs[True] == outputs[False],
        "shape": f"{len(prep.heldout_texts)} held-out quotes in batches of {cfg.eval.batch_size}; "
                 f"{len(prep.prompts)} greedy prompts x {cfg.eval.max_new_tokens} new tokens",
    }}
