"""``python -m repeatability.rescore results/<study> [--name NAME] [--force] [overrides ...]``:
score every finished run's adapter of a study again, each base model loaded once.

Runs that share a base (same resolved model, quantization, device and dtype) are scored on one
loaded base by swapping PEFT named adapters (``load_adapter`` / ``set_adapter`` /
``delete_adapter``), as LoRA Land evaluates many adapters on one base. Each run is scored with
its own stored ``config.yaml``, changed by the overrides: dotted keys (``eval.batching=
padding_free``, ``eval.max_examples=null``, ``train.max_length=128``) or a config group choice
(``dataset=qa``, ``eval=full``); ``eval.tasks=[classification]`` (or ``[generation]``) adds the task
scores of :mod:`repeatability.trial.tasks` and their per-example outputs. The result is one evaluation record per run,
``<run>/evals/<NAME>.json`` (docs/run-directory.md); the training summary is never rewritten.
The base model is scored too (cached in ``_base/`` like the training sweep does).

``NAME`` defaults to ``heldout`` without overrides and must be given with them.

Exit codes: 0 every run scored; 2 bad input, before anything is scored or written: no finished
run in the study, a run whose base cannot be resolved, a corrupted run, a bad override, or an
evaluation ``NAME`` that a run already has (unless ``--force``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from repeatability.config.errors import ConfigError
from repeatability.config.run import GROUPS, RunConfig, to_run_config
from repeatability.records import adapter_files, artifacts, eval_records, integrity
from repeatability.records.errors import RunDirError
from repeatability.records.metrics import PERPLEXITY_DEFINITION

log = logging.getLogger(__name__)

DEFAULT_NAME = "heldout"


@dataclass
class Job:
    """One finished run to score, with its (overridden) config and resolved base."""

    run: Path
    cfg: RunConfig
    model_id: str

    def base_key(self) -> str:
        return repr((self.model_id, self.cfg.model.revision, asdict(self.cfg.quant), self.cfg.device))


def finished_runs(study: Path) -> list[Path]:
    """Runs with ``DONE`` and an adapter (imported runs from published tables have none)."""
    runs = []
    for run in artifacts.iter_run_dirs(study):
        if artifacts.run_state(run) in artifacts.FINISHED_STATUSES and adapter_files.adapter_dir(run).is_dir():
            runs.append(run)
    return runs


def run_config(run: Path, overrides: list[str]) -> RunConfig:
    """The run's stored config with ``overrides`` applied (group choices composed from conf/)."""
    from repeatability.launching import preflight

    stored = OmegaConf.create(artifacts.read_config(run))
    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    keys = [o for o in overrides if o not in groups]
    if groups:
        preflight.check_group_values(groups)
        composed = preflight.compose_jobs(groups, multirun=False)[0]
        for o in groups:
            group = o.split("=", 1)[0]
            stored[group] = composed[group]
    bad = [k for k in keys
           if "=" not in k or OmegaConf.select(stored, k.split("=", 1)[0], default="<missing>") == "<missing>"]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: not key=value of a key in the run's config.yaml (or a config group)")
    return to_run_config(OmegaConf.merge(stored, OmegaConf.from_dotlist(keys)))


def plan(study: Path, name: str, overrides: list[str], force: bool) -> list[Job]:
    """Every run's job, with all bad input found before anything is loaded or written.

    Raises:
        ConfigError: one line naming the problem and its fix.
    """
    from repeatability.trial import modelling

    runs = finished_runs(study)
    if not runs:
        raise ConfigError(f"{study}: no finished runs to re-score (no trial directory with DONE and an adapter); "
                          "run the study first")
    jobs = []
    for run in runs:
        rel = run.relative_to(study)
        try:
            integrity.verify_manifest(run)
            if not adapter_files.weights_kept(run):
                raise RunDirError(f"adapter weights not kept ({artifacts.WEIGHTS_FILE} absent: a published run "
                                  "record); re-run the trial to re-score it")
            cfg = run_config(run, overrides)
            if eval_records.eval_file(run, name).exists() and not force:
                raise ConfigError(f"{eval_records.eval_file(run, name)}: evaluation {name!r} exists; "
                                  "pick another --name or pass --force to replace it")
        except RunDirError as exc:
            raise ConfigError(f"{rel}: {exc}") from None
        try:
            model_id = modelling.resolve_model(cfg.model, cfg.cache_dir)
        except ConfigError as exc:
            raise ConfigError(f"{rel}: its base model cannot be resolved: {exc}") from None
        jobs.append(Job(run, cfg, model_id))
    return jobs


def _prepared(job: Job, tokenizer: Any, study: Path, cache: dict[str, Any]) -> Any:
    """The held-out texts exactly as the run's pipeline builds them (cached per data setting)."""
    from repeatability.trial import pipeline

    c = job.cfg
    key = repr((c.dataset, c.determinism.split_seed, c.train.val_examples, c.eval.max_examples, c.model.template,
                c.model.scoring_bos, c.train.max_length))
    if key not in cache:
        cache[key] = pipeline.prepare_data(c, tokenizer, study)
    return cache[key]


def _swap_in(model: Any, base: Any, job: Job, index: int) -> Any:
    """Load the run's adapter as a named adapter on the loaded base and make it the active one."""
    from peft import PeftModel

    name, path = f"run{index}", str(adapter_files.adapter_dir(job.run))
    if model is None:
        return PeftModel.from_pretrained(base, path, adapter_name=name, is_trainable=False)
    previous = model.active_adapter
    model.load_adapter(path, adapter_name=name, is_trainable=False)
    model.set_adapter(name)
    model.delete_adapter(previous)  # one adapter in memory at a time
    return model


def score_group(jobs: list[Job], study: Path, name: str, overrides: list[str], force: bool) -> list[Path]:
    """Load the shared base once, score it (cached), then every job's adapter on it."""
    from repeatability.trial import evaluate, modelling, pipeline, tasks
    from repeatability.trial.weight_cache import dequantized_4bit_weights

    first = jobs[0].cfg
    device = modelling.resolve_device(first.device)
    dtype = modelling.resolve_compute_dtype(first.quant, device)
    start = time.perf_counter()
    tokenizer = modelling.load_tokenizer(jobs[0].model_id, first.model.revision)
    base = modelling.load_base(jobs[0].model_id, first.quant, device, dtype, first.model.revision)
    base_load_s = time.perf_counter() - start
    cache: dict[str, Any] = {}
    bases = {}
    for job in jobs:  # the base model's own perplexity per held-out setting, before any adapter
        prep = _prepared(job, tokenizer, study, cache)
        if job.cfg.eval.batching == "padding_free" or job.cfg.train.batching == "padding_free":
            pipeline.check_batching(job.cfg, base, prep, device)
        if job.cfg.eval.base_perplexity:
            bases[job.run] = pipeline.base_perplexity(job.cfg, base, tokenizer, prep, study, job.model_id,
                                                      device, dtype)
    if first.quant.load_in_4bit:  # as in training: the adapter ran on a k-bit-prepared base
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model, written = None, []
    for index, job in enumerate(jobs):
        t0 = time.perf_counter()
        model = _swap_in(model, base, job, index)
        t1 = time.perf_counter()
        prep = _prepared(job, tokenizer, study, cache)
        with dequantized_4bit_weights(model):
            ppl = evaluate.score_texts(model, tokenizer, prep.heldout_texts, job.cfg.train.max_length,
                                       job.cfg.eval.batch_size, device, job.cfg.eval.batching)
        timings = {"base_load_s": base_load_s, "adapter_load_s": t1 - t0, "score_s": time.perf_counter() - t1}
        record = _record(job, ppl, bases.get(job.run, {}), prep, overrides, device, dtype, timings, len(jobs))
        if prep.tasks is not None:  # eval.tasks (the run's own, or an override): task scores of this adapter
            t2 = time.perf_counter()
            with dequantized_4bit_weights(model):
                scores, per_example = tasks.run_tasks(model, tokenizer, list(job.cfg.eval.tasks), prep.tasks,
                                                      device=device, max_new_tokens=job.cfg.eval.task_max_new_tokens,
                                                      batch_size=job.cfg.eval.batch_size)
            record["metrics"] |= scores
            record["tasks"] = per_example
            record["timings"]["tasks_s"] = time.perf_counter() - t2
        written.append(eval_records.write_eval(job.run, name, record, force))
        log.info("%s: perplexity %.6g (%s)", job.run.relative_to(study), ppl.token_weighted, name)
    if model is not None:
        modelling.release_weights(model)  # the next base starts from a clean slate
    return written


def _record(job: Job, ppl: Any, base: dict[str, Any], prep: Any, overrides: list[str], device: str, dtype: Any,
            timings: dict[str, float], shared: int) -> dict[str, Any]:
    summary = artifacts.read_summary(job.run)
    sha = adapter_files.adapter_sha256(job.run)
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "overrides": list(overrides), "status": "complete",
        "adapter": {"sha256": sha, "matches_summary": sha == (summary.get("adapter") or {}).get("sha256")},
        "base": {"resolved": job.model_id, "device": device, "compute_dtype": str(dtype).replace("torch.", ""),
                 "quantization": asdict(job.cfg.quant), "runs_on_this_load": shared},
        "data": {k: prep.info[k]
                 for k in ("dataset", "heldout_sha256", "heldout_file", "n_heldout_scored", "max_length")},
        "eval": asdict(job.cfg.eval),
        "metrics": {**ppl.as_metrics(), **{k: v for k, v in base.items() if k.startswith("base_perplexity")}},
        "perplexity_definition": PERPLEXITY_DEFINITION,
        "timings": timings,
    }


def rescore(study: Path, name: str, overrides: list[str], force: bool = False) -> list[Path]:
    """Plan (all checks), then score each base's runs on one load; return the files written."""
    jobs = plan(study, name, overrides, force)
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.base_key(), []).append(job)
    log.info("%d runs on %d base model(s)", len(jobs), len(groups))
    return [f for group in groups.values() for f in score_group(group, study, name, overrides, force)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repeatability.rescore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study directory, e.g. results/default")
    parser.add_argument("overrides", nargs="*", help="key=value or group=choice, applied to each run's config")
    parser.add_argument("--name", help=f"evaluation name (evals/NAME.json); default {DEFAULT_NAME!r} without overrides")
    parser.add_argument("--force", action="store_true", help="replace existing evaluations of that name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        if args.name is None and args.overrides:
            raise ConfigError("overrides change what is scored: name the evaluation with --name NAME")
        name = args.name or DEFAULT_NAME
        eval_records.eval_file(Path("."), name)  # checks the name
        if not args.study.is_dir():
            raise ConfigError(f"{args.study}: no such study directory")
        files = rescore(args.study, name, args.overrides, args.force)
    except (ConfigError, RunDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %d evaluation record(s) named %r", len(files), name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
