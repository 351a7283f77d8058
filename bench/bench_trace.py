"""``optimizer_trace_over_step``: what ``diagnostics.optimizer_trace=true`` costs per step.

On the explain-edge shape (SmolLM2-135M NF4 + LoRA r=8 all linear, batch 1 quote, max length 64,
8-bit state with bitsandbytes 0.41.0's maps), the harness's training path with the trace and
without it, rounds alternating which goes first: median step with / without, and the trace's
own seconds per step (``OptimizerTrace.seconds``, measured inside the step).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from bench_common import config, fresh_model  # bench/ is on sys.path as the script's folder

log = logging.getLogger("bench")


def _steps(cfg: Any, path: str, ds: Any, collator: Any, out: Path, trace: bool) -> tuple[list[float], float]:
    from repeatability.config.run import DiagnosticsConfig
    from repeatability.trial import data, modelling, train
    from repeatability.trial.seeding import resolve_seeds

    model = fresh_model(cfg, path)
    # every step traced when on; no validation set, so the eval batch size is unused
    record, _, _ = train.train(model, ds, data.TokenDataset([]), collator, cfg.train, cfg.optim, cfg.eval,
                               DiagnosticsConfig(optimizer_trace=trace), resolve_seeds(cfg.determinism, 1),
                               "cpu", "no", "[bench]", out)
    modelling.release_weights(model)
    per_step = record.trace.seconds / max(len(record.step_seconds), 1) if record.trace else 0.0
    return record.step_seconds[1:], per_step  # the first step pays for warm-up


def bench_trace(steps: int, rounds: int, out: Path) -> dict[str, Any]:
    """Trace on vs off, interleaved over ``rounds``."""
    from repeatability.trial import data, modelling, pipeline

    cfg = config([f"train.max_steps={steps}", "train.eval_every=0", "train.checkpoint_every=0",
                   "train.batch_size=1", "optim=paged_adamw_8bit_bnb041", f"results_dir={out}",
                   "study=bench-trace"])
    path = modelling.resolve_model(cfg.model, cfg.cache_dir)
    tok = modelling.load_tokenizer(path)
    prep = pipeline.prepare_data(cfg, tok, out / "bench-trace")
    collator = data.make_collator(cfg.train.batching, tok.pad_token_id)
    times: dict[bool, list[float]] = {True: [], False: []}
    inside: list[float] = []
    for r in range(rounds):
        for trace in ((True, False) if r % 2 == 0 else (False, True)):
            step_s, per_step = _steps(cfg, path, prep.train_ds, collator, out / f"ckpt-trace-{r}-{trace}", trace)
            times[trace] += step_s
            inside += [per_step] if trace else []
        log.info("round %d: median step with trace %.3fs, without %.3fs", r + 1,
                 statistics.median(times[True]), statistics.median(times[False]))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"optimizer_trace_over_step": round(on / off, 3),
            "optimizer_trace_step_s_median": {"on": round(on, 4), "off": round(off, 4)},
            "optimizer_trace_s_per_step": round(statistics.mean(inside), 4),
            "optimizer_trace_shape": "batch 1, 0.41.0 maps, 8-bit state"}
