"""One run, stage by stage: seeds → data → base → LoRA → train → score → generate → save."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from repeatability.config.run import RunConfig
from repeatability.records import (
    adapter_files,
    artifacts,
    checkpoint_files,
    curve_files,
    eval_records,
    integrity,
    tracking,
)
from repeatability.records import run_setup as R
from repeatability.records import summary as S
from repeatability.records.environment import PeakMemory, capture_environment, cpu_model
from repeatability.records.metrics import NAME as N
from repeatability.records.record import headline
from repeatability.trial import data, evaluate, modelling, optimtrace, tasks, train
from repeatability.trial.determinism import apply_determinism
from repeatability.trial.results import fill_results
from repeatability.trial.seeding import Seeds, resolve_seeds, seed_everything
from repeatability.trial.stage_outputs import Built, Prepared
from repeatability.trial.weight_cache import dequantized_4bit_weights

log = logging.getLogger(__name__)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


cell_of = artifacts.cell_of  # the run's cell: named by the contract (preflight reads it without torch)


def prepare_data(cfg: RunConfig, tokenizer: Any, study: Path) -> Prepared:
    """Load, split (fixed split seed), template and tokenize; store the held-out split once."""
    examples = data.load_examples(cfg.dataset)
    split = data.split_examples(examples, cfg.determinism.split_seed, cfg.train.val_examples, cfg.dataset.name)
    bos = cfg.model.scoring_bos if cfg.model.scoring_bos is not None else (tokenizer.bos_token or "")
    eos = tokenizer.eos_token or ""
    kind, template = cfg.dataset.kind, cfg.model.template

    def texts(items: list[data.Example]) -> list[str]:
        return [data.apply_template(template, kind, e, bos, eos) for e in items]

    heldout = texts(split.heldout)
    if cfg.eval.max_examples:
        heldout = heldout[: cfg.eval.max_examples]  # split order is already a seeded shuffle
    sha = data.heldout_sha256(heldout)
    split_path = artifacts.split_file(study, sha)
    if not split_path.exists():
        artifacts.write_jsonl(split_path, ({"index": i, "text": t} for i, t in enumerate(heldout)))
    as_example = (lambda p: data.Example(text=p)) if kind == "text" else (lambda p: data.Example(instruction=p))
    prompts = [(p, data.apply_template(template, kind, as_example(p), bos, eos, prompt_only=True))
               for p in data.prompt_set(cfg)]
    info = {
        "dataset": cfg.dataset.name, "source": cfg.dataset.source, "kind": kind,
        "template": template if kind == "instruction" else "plain (bos + text + eos)",
        "bos": bos, "eos": eos, "n_total": split.n_total, "n_train": len(split.train), "n_val": len(split.val),
        "n_heldout": len(split.heldout), "n_heldout_scored": len(heldout),
        "split_seed": cfg.determinism.split_seed, "heldout_raw_sha256": split.raw_sha256,
        "heldout_sha256": sha, "heldout_file": str(split_path.relative_to(study)),
        "max_length": cfg.train.max_length,
    }
    ml = cfg.train.max_length
    task_inputs = None
    if cfg.eval.tasks:
        task_inputs = tasks.build_inputs(
            split.heldout, split.train,
            lambda e, prompt_only: data.apply_template(template, kind, e, bos, eos, prompt_only),
            data.task_classes(cfg, split) if "classification" in cfg.eval.tasks else [], cfg.eval.task_examples,
            cfg.eval.few_shot_k, cfg.determinism.split_seed)
    return Prepared(
        train_ds=data.TokenDataset(data.tokenize(tokenizer, texts(split.train), ml)),
        val_ds=(data.TokenDataset(data.tokenize(tokenizer, texts(split.val), ml)) if split.val
                else data.TokenDataset([])),
        heldout_texts=heldout, prompts=prompts, info=info, tasks=task_inputs,
    )


def base_perplexity(cfg: RunConfig, model: Any, tokenizer: Any, prep: Prepared, study: Path,
                    model_id: str, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Base-model perplexity, computed once per (model, quant, device, held-out split) and cached."""
    parts = [cfg.model.name, model_id, asdict(cfg.quant), str(dtype), device,
             prep.info["heldout_sha256"], cfg.train.max_length, cfg.eval.base_repeats]
    if cfg.eval.batching != "padded":  # padded scoring keeps the keys studies already hold
        parts.append(cfg.eval.batching)
    key_src = json.dumps(parts)
    key = f"{cfg.model.name}__{cfg.dataset.name}__{hashlib.sha256(key_src.encode()).hexdigest()[:16]}"
    file = artifacts.base_perplexity_file(study, key)
    if file.exists():
        return artifacts.read_json(file)
    log.info("scoring the base model on %d held-out examples %d time(s) (once per model/dataset/split)",
             len(prep.heldout_texts), cfg.eval.base_repeats)
    start = time.perf_counter()
    with dequantized_4bit_weights(model):
        repeats = [evaluate.score_texts(model, tokenizer, prep.heldout_texts, cfg.train.max_length,
                                        cfg.eval.batch_size, device, cfg.eval.batching)
                   for _ in range(cfg.eval.base_repeats)]
    ppl = repeats[0]
    spread = max(r.token_weighted for r in repeats) - min(r.token_weighted for r in repeats)
    record = {**ppl.as_metrics("base_"), "key": json.loads(key_src), "seconds": time.perf_counter() - start,
              N.base_perplexity_repeats: [r.token_weighted for r in repeats], N.base_perplexity_repeat_spread: spread}
    artifacts.write_json(file, record)
    return record


def check_batching(cfg: RunConfig, model: Any, prep: Prepared, device: str) -> None:
    """Before any compute: padding-free batches only where the model keeps packed examples apart."""
    for key, batching in (("train.batching", cfg.train.batching), ("eval.batching", cfg.eval.batching)):
        if batching == "padding_free":
            probe = prep.train_ds.ids[:2] if len(prep.train_ds) >= 2 else [[1, 2, 3], [4, 5, 6]]
            modelling.check_packed_attention(model, probe[0], probe[1], device, key)
            return


def batching_record(cfg: RunConfig, record: train.TrainLog) -> dict[str, Any]:
    """The summary's ``batching`` group: how batches were formed, and how much was padding."""
    return {"train": cfg.train.batching, "eval": cfg.eval.batching, "train_real_tokens": record.real_tokens,
            "train_token_slots": record.token_slots, "real_token_efficiency": record.token_efficiency()}


def build_model(cfg: RunConfig, seeds: Seeds, prep_fn: Any, study: Path, device: str,
                dtype: torch.dtype) -> tuple[Built, Prepared]:
    """Resolve and load the base, score it once, then seed and attach LoRA."""
    start = time.perf_counter()
    model_id = modelling.resolve_model(cfg.model, cfg.cache_dir)
    tokenizer = modelling.load_tokenizer(model_id, cfg.model.revision)
    prep = prep_fn(tokenizer)
    base = modelling.load_base(model_id, cfg.quant, device, dtype, cfg.model.revision)
    load_s = time.perf_counter() - start
    check_batching(cfg, base, prep, device)
    base_ppl = (base_perplexity(cfg, base, tokenizer, prep, study, model_id, device, dtype)
                if cfg.eval.base_perplexity else {})
    base_tasks = {}
    if cfg.eval.baselines and prep.tasks is not None:
        key = json.dumps([cfg.model.name, model_id, asdict(cfg.quant), str(dtype), device, asdict(cfg.eval),
                          tasks.subset_sha256(prep.tasks.examples), tasks.subset_sha256(prep.tasks.shots)])
        cache = artifacts.base_perplexity_file(study, f"{cfg.model.name}__{cfg.dataset.name}__tasks__"
                                                      f"{hashlib.sha256(key.encode()).hexdigest()[:16]}")
        base_tasks = tasks.baselines(cfg, base, tokenizer, prep.tasks, cache, device)
    seed_everything(seeds.lora_init)  # LoRA A matrices are drawn from the global RNG now
    model = modelling.add_lora(base, cfg.model, cfg.lora, cfg.quant.load_in_4bit, cfg.train.gradient_checkpointing)
    fingerprint = evaluate.canary_fingerprint(model, tokenizer, prep.heldout_texts, cfg.train.max_length, device)
    return Built(model, tokenizer, model_id, modelling.count_4bit_layers(model), base_ppl, load_s, base_tasks,
                 fingerprint), prep


def execute(cfg: RunConfig, config_yaml: str, overrides: list[str], path: Path,
            resume_from: Path | None = None, guard: Callable[[], None] = lambda: None, *,
            thread_budget: dict[str, Any]) -> dict[str, Any]:
    """Run one trial into ``path`` (already fresh, but for the checkpoint ``resume_from``, if
    given, to continue from); return the summary written (its JSON form).

    ``thread_budget`` is the launcher's (:func:`repeatability.launching.threads.thread_budget`): its
    ``threads`` are applied and the whole dict is recorded as ``determinism.thread_budget``.

    The summary is the schema's record (:class:`repeatability.records.summary.Summary`), filled group by
    group as the run measures it: a group the schema does not declare fails where it is filled.
    ``guard`` is called before the results are written (after training) and before the run is
    marked done; it raises when this process no longer holds ``path`` (a lost run claim).
    """
    t_start = time.perf_counter()
    record = S.Summary(study=cfg.study, trial=cfg.trial, cell=R.Cell(**asdict(cell_of(cfg))), started_at=utc_now(),
                       resumed=S.Resumed(from_step=checkpoint_files.checkpoint_step(resume_from),
                                         checkpoint=resume_from.name) if resume_from else None)
    study = artifacts.study_dir(cfg.results_dir, cfg.study)
    artifacts.write_config(path, config_yaml, overrides)
    environment = capture_environment()
    artifacts.write_environment(path, environment)
    record.lock = S.part(R.Lock, environment["lock"], "lock")
    record.determinism = S.part(R.Determinism, {**apply_determinism(cfg.determinism.mode, thread_budget["threads"]),
                                                "thread_budget": thread_budget}, "determinism")
    seeds = resolve_seeds(cfg.determinism, cfg.trial)
    record.seeds = S.part(R.Seeds, seeds.to_dict(), "seeds")
    with tracking.tracker_run(cfg.tracking, path, study, tracking_ids(cfg)) as tracker:
        tracker.start(yaml.safe_load(config_yaml) or {}, seeds.to_dict())
        _train_and_score(cfg, path, study, seeds, resume_from, guard, tracker, record, environment["git"])
        record.timings.total_s = time.perf_counter() - t_start
        record.tracking = S.part(R.Tracking, tracker.record, "tracking")
        record.finished_at = utc_now()
        record.headline = headline(record)
        if S.required_missing(record):  # the pipeline and the schema disagree: a bug here
            raise RuntimeError(f"summary lacks {', '.join(S.required_missing(record))}")
        summary = S.dump(record)
        guard()
        tracker.log_end(summary)
    artifacts.write_summary(path, record)
    # checkpoints go only once DONE is written: a run that cannot be marked done (a full disk)
    # resumes from its last one instead of starting over
    integrity.mark_done(path, leave_out=() if cfg.train.keep_checkpoints else (artifacts.CHECKPOINTS,))
    if not cfg.train.keep_checkpoints:
        checkpoint_files.remove_checkpoints(path)
    return summary


def tracking_ids(cfg: RunConfig) -> dict[str, Any]:
    """What groups a run in an experiment tracker: study, cell (and its parts), trial."""
    cell = cell_of(cfg)
    return {"study": cfg.study, "cell": cell.dirname, "model": cell.model, "dataset": cell.dataset,
            "optim": cell.optim, "variant": cell.variant, "trial": cfg.trial}


def _train_and_score(cfg: RunConfig, path: Path, study: Path, seeds: Seeds, resume_from: Path | None,
                     guard: Callable[[], None], tracker: tracking.TrackerRun, summary: S.Summary,
                     git: dict[str, Any]) -> None:
    """Build, train, score and generate; save the adapter, loss curve and generations; fill
    ``summary`` with everything but the total time, the tracker and the headline."""
    device = modelling.resolve_device(cfg.device)
    dtype = modelling.resolve_compute_dtype(cfg.quant, device)
    mixed = modelling.resolve_mixed_precision(cfg.quant, device, dtype)
    label = f"[{cell_of(cfg).dirname} trial {cfg.trial}]"
    built: Built | None = None
    try:
        with PeakMemory(device) as memory:
            built, prep = build_model(cfg, seeds, lambda tok: prepare_data(cfg, tok, study), study, device, dtype)
            t_train = time.perf_counter()
            record, effective, precision = train.train(
                built.model, prep.train_ds, prep.val_ds,
                data.make_collator(cfg.train.batching, built.tokenizer.pad_token_id),
                cfg.train, cfg.optim, cfg.eval, cfg.diagnostics, seeds, device, mixed, label,
                checkpoint_files.checkpoint_root(path), resume_from, tracker)
            train_s = time.perf_counter() - t_train
            metrics, eval_s, gen_s, generations = _score_and_generate(cfg, built, prep, record, seeds, device)
            task_scores, task_record, tasks_s = _run_tasks(cfg, built, prep, record, device)
        metrics.update(task_scores)
        guard()
        adapter_sha = adapter_files.save_adapter(path, built.model)
        fill_results(summary, cfg, built, prep, record, effective, metrics, device, _device_name(device), dtype)
        summary.precision = S.part(R.Precision, {"compute_dtype": str(dtype).replace("torch.", ""), **precision},
                                   "precision")
        summary.batching = S.part(R.Batching, batching_record(cfg, record), "batching")
        summary.numerics = S.part(R.Numerics, {**built.fingerprint, **git}, "numerics")
    finally:  # the next job of this process starts from a clean slate, whatever happened
        if built is not None:
            modelling.release_weights(built.model)
    curve_files.write_loss_curve(path, record.rows)
    artifacts.write_generations(path, generations)
    if task_record is not None:
        eval_records.write_run_tasks(path, {"metrics": task_scores, **task_record})
        summary.tasks = S.part(S.Tasks, tasks.summary_group(cfg, prep.tasks, task_record, built.base_tasks), "tasks")
    if cfg.train.neftune_noise_alpha is not None:
        summary.neftune = S.Neftune(noise_alpha=cfg.train.neftune_noise_alpha, scope=train.NEFTUNE_SCOPE)
    if record.trace is not None:
        curve_files.write_optimizer_trace(path, record.trace.rows, optimtrace.COLUMNS)
        summary.optimizer_trace = S.part(S.OptimizerTrace, optimtrace.summarize(record.trace.rows, record.trace.seconds,
                                                                                record.trace.every),
                                         "optimizer_trace")
    summary.timings = S.part(S.Timings, {"model_load_s": built.load_s, "train_s": train_s, "eval_s": eval_s,
                                         "generation_s": gen_s, "total_s": math.nan, **train.step_time_stats(record),
                                         **({"tasks_s": tasks_s} if task_record is not None else {})},
                             "timings")
    summary.memory = S.part(S.Memory, memory.result(), "memory")
    summary.adapter = S.Adapter(path=artifacts.ADAPTER, sha256=adapter_sha)
    summary.checkpointing = S.part(S.Checkpointing, {"every": cfg.train.checkpoint_every, "saved": record.checkpoints,
                                                     "kept": cfg.train.keep_checkpoints}, "checkpointing")


def _run_tasks(cfg: RunConfig, built: Built, prep: Prepared, record: train.TrainLog,
               device: str) -> tuple[dict[str, float], dict[str, Any] | None, float]:
    """The task evaluators on the fine-tuned model (none when not asked for, or after a blow-up
    that left NaN weights: their scores stay absent)."""
    if prep.tasks is None or record.divergence:
        return {}, None, 0.0
    start = time.perf_counter()
    with dequantized_4bit_weights(built.model):
        scores, task_record = tasks.run_tasks(built.model, built.tokenizer, list(cfg.eval.tasks), prep.tasks,
                                              device=device, max_new_tokens=cfg.eval.task_max_new_tokens,
                                              batch_size=cfg.eval.batch_size)
    return scores, task_record, time.perf_counter() - start


def _score_and_generate(cfg: RunConfig, built: Built, prep: Prepared, record: train.TrainLog, seeds: Seeds,
                        device: str) -> tuple[dict[str, Any], float, float, list[dict[str, Any]]]:
    """Held-out perplexity and generations; skipped when training already produced NaN/inf."""
    if record.divergence:
        log.warning("training diverged at step %s: held-out scoring and generation skipped", record.divergence["step"])
        return {N.perplexity_token_weighted: math.nan, N.perplexity_mean_per_sequence: math.nan}, 0.0, 0.0, []
    with dequantized_4bit_weights(built.model):  # the same bits, one dequantize per layer (weight_cache.py)
        start = time.perf_counter()
        ppl = evaluate.score_texts(built.model, built.tokenizer, prep.heldout_texts, cfg.train.max_length,
                                   cfg.eval.batch_size, device, cfg.eval.batching)
        eval_s = time.perf_counter() - start
        start = time.perf_counter()
        generations = evaluate.run_generations(built.model, built.tokenizer, prep.prompts, cfg.eval,
                                               seeds.generation, cfg.dataset.multiple_choice, device)
    return ppl.as_metrics(), eval_s, time.perf_counter() - start, generations


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return cpu_model()


