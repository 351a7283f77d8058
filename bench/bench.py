"""The ratios that decide how many trials a study can afford (a benchmark, never a timed test).

    .venv/bin/python bench/bench.py [--steps 8] [--rounds 2] [--sweep-steps 12] [--out DIR]

On the default study's model and data (SmolLM2-135M, NF4 base, LoRA r=8 on all linear layers,
the default optimizer, batch 4 of quotes, max length 64), in one process or interleaved:

1. ``harness_over_bare_step``: the median train step of the harness's training path
   (``repeatability.trial.train.train``: the HF Trainer with its callbacks and logging) over a bare
   PyTorch + PEFT + bitsandbytes loop (collate, forward, backward, clip, step, zero_grad) on the
   *same batches* (those the harness's sampler drew, replayed), same model, LoRA, optimizer
   class and padding; rounds alternate which arm goes first. Validation and checkpoints are off
   in both (their costs are timed in each run's summary, never inside a step).
   ``padding_free_over_padded_step``: the harness step with padding-free batches over padded.
2. ``sweep_over_train`` and ``real_token_efficiency``: a small sweep through the real command
   line (2 trials of the default study, ``--sweep-steps`` steps each, 64 held-out quotes), once
   padded and once padding-free: wall time over the sum of the runs' own ``train_s`` (the
   headline: padding-free, the default), the per-stage sums from the runs' ``timings`` (base
   load, held-out scoring, generations) and ``other_s``, the rest of the wall time (process
   start, imports, Hydra, the base model's scoring, file writes), and the runs' real tokens over
   computed token slots (from their summaries).
4. ``optimizer_trace_over_step`` (bench/bench_trace.py): the harness step with
   ``diagnostics.optimizer_trace=true`` over without, on the explain-edge shape (batch 1,
   0.41.0 maps), ``--trace-steps`` steps per arm and round, and the trace's own seconds per step.
5. ``eval_dequant_cache`` (bench/bench_evalcache.py): held-out scoring seconds and greedy
   generation tokens/s with each 4-bit weight dequantized once per evaluation vs once per
   forward (``repeatability.trial.weight_cache``), and whether both gave the same bits.
6. ``layouts`` (bench/bench_parallel.py): runs per hour of one run at a time with every core's
   threads (1×2 here) vs two runs side by side with one thread each (2×1), on 2 trials × both
   optimizer arms of the default study, ``--sweep-steps`` steps each, and whether their adapters agree.
7. ``batched_scoring`` (bench/bench_eval.py): held-out scoring of the default study's 200 quotes in
   length-sorted batches of 16 vs one at a time, and the largest perplexity difference.
3. ``rescore_over_forward``: ``python -m repeatability.rescore`` on the padded sweep (K = 2
   adapters on one loaded base), its scoring wall time (base load excluded, reported apart) over
   K x the pure forward time of scoring one adapter.

Logs progress; the last line of stdout is one JSON object with every ratio, the sizes and the
machine (CPU model, cores, torch threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import ROOT, config, fresh_model  # bench/ is on sys.path as the script's folder

log = logging.getLogger("bench")


class RecordingCollator:
    """Wraps the harness's collator and keeps the features of every batch it was asked for."""

    def __init__(self, inner: Any):
        self.inner, self.batches = inner, []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        self.batches.append(features)
        return self.inner(features)


def _harness_steps(cfg: Any, path: str, ds: Any, collator: Any, out: Path) -> tuple[list[float], Any]:
    from repeatability.config.run import DiagnosticsConfig
    from repeatability.trial import data, modelling, train
    from repeatability.trial.seeding import resolve_seeds

    model = fresh_model(cfg, path)
    # no validation set: the eval batch size is unused; no optimizer trace (bench_trace.py times it)
    record, _, _ = train.train(model, ds, data.TokenDataset([]), collator, cfg.train, cfg.optim, cfg.eval,
                               DiagnosticsConfig(), resolve_seeds(cfg.determinism, 1), "cpu", "no", "[bench]", out)
    modelling.release_weights(model)
    return record.step_seconds[1:], record  # the first step pays for warm-up


def _bare_steps(cfg: Any, path: str, batches: list[list[dict[str, Any]]], collator: Any) -> list[float]:
    """A plain loop on the same batches: what a researcher would write without the harness."""
    import torch

    from repeatability.trial import modelling, train

    model = fresh_model(cfg, path)
    params = [p for p in model.parameters() if p.requires_grad]
    cls, kwargs = train.optimizer_class_and_kwargs(cfg.optim, cfg.train.lr)
    opt = cls(params, **kwargs)
    model.train()
    times = []
    for features in batches:
        start = time.perf_counter()
        loss = model(**collator(features)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    modelling.release_weights(model)
    return times[1:]


def bench_steps(steps: int, rounds: int, out: Path) -> dict[str, Any]:
    """Harness vs bare, and padded vs padding-free, interleaved over ``rounds``."""
    from repeatability.trial import data, modelling, pipeline

    cfg = config([f"train.max_steps={steps}", "train.eval_every=0", "train.checkpoint_every=0",
                   f"results_dir={out}", "study=bench-steps"])
    path = modelling.resolve_model(cfg.model, cfg.cache_dir)
    tok = modelling.load_tokenizer(path)
    prep = pipeline.prepare_data(cfg, tok, out / "bench-steps")
    padded, free = data.make_collator("padded", tok.pad_token_id), data.make_collator("padding_free", tok.pad_token_id)
    times: dict[str, list[float]] = {"harness": [], "bare": [], "harness_padding_free": []}
    real = slots = 0
    for r in range(rounds):
        recorder = RecordingCollator(padded)
        harness, record = _harness_steps(cfg, path, prep.train_ds, recorder, out / f"ckpt-{r}")
        arms = [("harness_padding_free",
                 lambda r=r: _harness_steps(cfg, path, prep.train_ds, free, out / f"ckpt-pf-{r}")[0]),
                ("bare", lambda recorder=recorder: _bare_steps(cfg, path, recorder.batches, padded))]
        for name, arm in (arms if r % 2 == 0 else arms[::-1]):
            times[name] += arm()
        times["harness"] += harness
        real, slots = real + record.real_tokens, slots + record.token_slots
        log.info("round %d: median step harness %.3fs, bare %.3fs, harness padding-free %.3fs", r + 1,
                 *(statistics.median(times[k]) for k in ("harness", "bare", "harness_padding_free")))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"harness_over_bare_step": round(med["harness"] / med["bare"], 3),
            "padding_free_over_padded_step": round(med["harness_padding_free"] / med["harness"], 3),
            "step_s_median": {k: round(v, 4) for k, v in med.items()},
            "steps_timed_per_arm": len(times["bare"]),
            "bench_batches_real_token_efficiency": round(real / slots, 4)}


def _sweep(results: Path, study: str, steps: int, extra: list[str]) -> float:
    args = [sys.executable, "-m", "repeatability.run", "-m", "trial=1,2", f"study={study}", f"results_dir={results}",
            f"train.max_steps={steps}", "eval.max_examples=64", *extra]
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _summaries(study: Path) -> list[dict[str, Any]]:
    from repeatability.records import artifacts

    return [artifacts.read_summary(p) for p in artifacts.iter_run_dirs(study)]


def bench_sweeps(steps: int, out: Path) -> dict[str, Any]:
    """Small sweeps through the real command line, padded and padding-free."""
    result: dict[str, Any] = {"sweep": {"trials": 2, "steps": steps, "heldout_scored": 64}}
    for batching in ("padded", "padding_free"):
        study = f"sweep-{batching}"
        wall = _sweep(out, study, steps, [f"train.batching={batching}", f"eval.batching={batching}"])
        runs = _summaries(out / study)
        train_s = sum(s["timings"]["train_s"] for s in runs)
        real = sum(s["batching"]["train_real_tokens"] for s in runs)
        slots = sum(s["batching"]["train_token_slots"] for s in runs)
        stages = {k: round(sum(s["timings"][k] for s in runs), 1) for k in ("model_load_s", "eval_s", "generation_s")}
        rest = wall - train_s - sum(stages.values())  # process start, imports, Hydra, base scoring, writing files
        result["sweep"][batching] = {"wall_s": round(wall, 1), "train_s": round(train_s, 1), **stages,
                                     "other_s": round(rest, 1), "sweep_over_train": round(wall / train_s, 3),
                                     "other_over_train": round(rest / train_s, 3),
                                     "real_token_efficiency": round(real / slots, 4),
                                     "step_s_median": round(statistics.median(s["timings"]["step_s_median"]
                                                                              for s in runs), 4)}
        log.info("sweep %s: %.1fs wall, %.1fs training", batching, wall, train_s)
    # the headline is the default study's batching (padding-free); padded stays beside it
    result["sweep_over_train"] = result["sweep"]["padding_free"]["sweep_over_train"]
    result["real_token_efficiency"] = {b: result["sweep"][b]["real_token_efficiency"]
                                       for b in ("padded", "padding_free")}
    return result


def machine() -> dict[str, Any]:
    import torch

    from repeatability.records.environment import cpu_model

    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="train steps per arm and round (harness vs bare)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sweep-steps", type=int, default=12, help="train steps per run of the small sweeps")
    parser.add_argument("--trace-steps", type=int, default=12, help="train steps per arm and round (trace on vs off)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=("steps", "sweeps", "rescore", "trace", "evalcache", "layouts", "scoring"))
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("repeatability", "transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-"))
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if "steps" not in a.skip:
        result |= bench_steps(a.steps, a.rounds, out)
    if "sweeps" not in a.skip:
        result |= bench_sweeps(a.sweep_steps, out)
    if "rescore" not in a.skip and "sweeps" not in a.skip:
        from bench_rescore import bench_rescore  # bench/ is on sys.path as the script's folder

        result |= bench_rescore(out / "sweep-padded")
    if "trace" not in a.skip:
        from bench_trace import bench_trace

        result |= bench_trace(a.trace_steps, a.rounds, out)
    if "evalcache" not in a.skip:
        from bench_evalcache import bench_evalcache

        result |= bench_evalcache(a.rounds, out)
    if "layouts" not in a.skip:
        from bench_parallel import bench_layouts

        result["layouts"] = bench_layouts(2, a.sweep_steps, out / "layouts",
                                          ["optim=paged_adamw_8bit,paged_adamw_32bit"])
    if "scoring" not in a.skip:
        from bench_eval import bench_batched_scoring

        result |= bench_batched_scoring()
    result |= {"machine": machine(), "model": "smollm2-135m (NF4 base, LoRA r=8 all linear)",
               "batch": "4 quotes, max length 64", "bench_s": round(time.perf_counter() - start, 1), "out": str(out)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
