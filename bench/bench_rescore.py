"""Re-scoring a study's adapters on one loaded base vs the pure forward time of scoring
(a part of ``bench/bench.py``; the study is one its small sweep wrote)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")


def _forward_s(job: Any, study: Path) -> float:
    """Seconds of one held-out scoring pass with the adapter already attached (no loading)."""
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training

    from repeatability.records import adapter_files
    from repeatability.trial import evaluate, modelling, pipeline

    cfg = job.cfg
    tok = modelling.load_tokenizer(job.model_id)
    base = modelling.load_base(job.model_id, cfg.quant, "cpu", torch.float32)
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = PeftModel.from_pretrained(base, str(adapter_files.adapter_dir(job.run)))
    texts = pipeline.prepare_data(cfg, tok, study).heldout_texts
    evaluate.score_texts(model, tok, texts[:4], cfg.train.max_length, cfg.eval.batch_size, "cpu")  # warm-up
    start = time.perf_counter()
    evaluate.score_texts(model, tok, texts, cfg.train.max_length, cfg.eval.batch_size, "cpu", cfg.eval.batching)
    seconds = time.perf_counter() - start
    modelling.release_weights(model)
    return seconds


def bench_rescore(study: Path) -> dict[str, Any]:
    """``rescore_over_forward``: re-scoring K adapters on one loaded base (everything after the
    base load: adapter loads and swaps, data preparation, scoring, records) over K pure forwards."""
    from repeatability import rescore
    from repeatability.records import artifacts

    jobs = rescore.plan(study, "bench", [], force=True)
    forward = _forward_s(jobs[0], study)
    start = time.perf_counter()
    files = rescore.rescore(study, "bench", [], force=True)
    wall = time.perf_counter() - start
    records = [artifacts.read_json(f) for f in files]
    base_load = records[0]["timings"]["base_load_s"]
    k = len(records)
    log.info("rescore: %d adapters in %.1fs (base load %.1fs); one forward pass %.1fs", k, wall, base_load, forward)
    return {"rescore_over_forward": round((wall - base_load) / (k * forward), 3),
            "rescore": {"adapters": k, "wall_s": round(wall, 2), "base_load_s": round(base_load, 2),
                        "forward_s": round(forward, 2),
                        "adapter_load_s": [round(r["timings"]["adapter_load_s"], 3) for r in records],
                        "score_s": [round(r["timings"]["score_s"], 3) for r in records],
                        "heldout_scored": records[0]["data"]["n_heldout_scored"]}}
