"""One job of a sweep with resume and isolation, the sweep ledger, and the end-of-sweep report.

- a finished run (complete or diverged) is skipped, and said so; its config must match and its
  files must match its manifest (a corrupted run is refused, never redone over);
- any other run is claimed first (:mod:`repeatability.launching.claims`): one claimed by a live launcher
  is skipped ("running elsewhere: host/pid"), a stale claim is taken over and said so;
- a half-finished or failed run is redone from scratch;
- an exception is recorded in the run directory (status failed, traceback) while this launcher
  still holds its claim, and the sweep goes on;
- an exception outside the run (its claim, the ledger) is logged with its traceback and passed to
  Hydra, which runs the other jobs and then fails the command;
- a write that fails for want of storage (disk full, quota, read-only, I/O error) stops the
  sweep instead, in one line, leaving the run to resume (:mod:`repeatability.launching.faults`);
- at the end the sweep lists what happened and exits non-zero if any run failed, or was lost (a
  SLURM job the launcher stopped waiting for: :mod:`repeatability.launching.slurm_wait`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from repeatability.config.errors import ConfigError
from repeatability.config.run import RunConfig, to_run_config
from repeatability.launching import claims, faults, launchers, notices, preemption, slurm_wait, threads
from repeatability.records import artifacts, checkpoint_files, integrity, storage
from repeatability.records.errors import RunDirError
from repeatability.records.metrics import NAME as N

log = logging.getLogger("repeatability")

LEDGER = "ledger.jsonl"
# keys that may differ between a finished run and a re-run of it without changing the result
_NEUTRAL_KEYS = ("results_dir", "cache_dir", "claim_heartbeat_s", "claim_stale_after_s", "tracking")
# runs that fail the command
BAD_STATUSES = ("failed", "invalid", "claim_lost", faults.STOPPED, faults.NOT_STARTED, slurm_wait.LOST)
# this process's ledger entries, by ledger: kept when the disk is full
_outcomes: dict[Path | None, list[dict[str, Any]]] = {}


def _sweep_dir() -> Path | None:
    """The sweep's folder (``_sweeps/<time>_<pid>``, one per command): ledger and notice markers."""
    try:
        return Path(HydraConfig.get().runtime.output_dir).parent
    except ValueError:  # not under Hydra (tests calling run_one directly)
        return None


def _ledger_path() -> Path | None:
    sweep_dir = _sweep_dir()
    return sweep_dir / LEDGER if sweep_dir else None


def append_ledger(entry: dict[str, Any], path: Path | None = None) -> None:
    """Append one job's line to the sweep ledger (kept in this process too, so that a sweep
    stopped by a full disk still lists its runs).

    Raises:
        StorageFault: the ledger's filesystem is full, read-only or failing.
    """
    path = path or _ledger_path()
    _outcomes.setdefault(path, []).append(entry)
    if path is None:
        return
    with storage.writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:  # one short line per job: appends from parallel workers stay whole
            fh.write(json.dumps(entry) + "\n")


TOTAL_ENV, START_ENV = "REPEATABILITY_SWEEP_TOTAL", "REPEATABILITY_SWEEP_START"


def _job_progress() -> str:
    """``run k/n (s skipped, f failed so far, m min elapsed)``: n and the start come from preflight."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return "run"
    if hc.mode.name != "MULTIRUN":
        return "run"
    total = os.environ.get(TOTAL_ENV, "?")
    ledger = _ledger_path()
    done = read_ledger(ledger) if ledger else []
    skipped = sum(e["status"] == "skipped" for e in done)
    failed = sum(e["status"] in BAD_STATUSES for e in done)
    start = float(os.environ.get(START_ENV, time.time()))
    return (f"run {hc.job.num + 1}/{total} ({skipped} skipped, {failed} failed so far, "
            f"{(time.time() - start) / 60:.1f} min elapsed)")


def _config_fingerprint(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for key in _NEUTRAL_KEYS:
        plain.pop(key, None)
    return json.dumps(plain, sort_keys=True)


def _stored_config(path: Path) -> DictConfig:
    """The run's ``config.yaml`` with keys added to the schema since it ran at their defaults
    (a run made before ``train.batching`` existed ran padded batches, the schema's default), so
    a new key alone does not make an old run "another config"."""
    stored = OmegaConf.load(path / artifacts.CONFIG)
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), stored)  # type: ignore[return-value]
    except OmegaConfBaseException:  # a key the schema no longer has: compare as stored (it differs)
        return stored  # type: ignore[return-value]


def _check_same_config(path: Path, cfg: DictConfig) -> None:
    """A finished run is only skipped when it ran the same config; otherwise say so."""
    stored = _stored_config(path)
    if _config_fingerprint(stored) != _config_fingerprint(cfg):  # type: ignore[arg-type]
        a = OmegaConf.to_container(stored, resolve=True)
        b = OmegaConf.to_container(cfg, resolve=True)
        diff = sorted(_diff_keys(a, b))[:5]
        raise RunDirError(
            f"{path} holds a finished run with a different config ({', '.join(diff)}); "
            f"use another study=NAME (or variant=LABEL) instead of overwriting it"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in keys if key not in _NEUTRAL_KEYS or prefix
                for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if a != b else []


def run_one(cfg: DictConfig) -> str:
    """The Hydra task: returns the run's status (complete | diverged | failed | skipped |
    running_elsewhere | claim_lost | invalid). A preempted SLURM job does not return: it leaves
    a checkpoint, a ``preempted`` ledger line, and is requeued (:mod:`repeatability.launching.preemption`)."""
    started = time.perf_counter()
    notices.install(_sweep_dir())  # here, not in main: joblib workers are fresh processes
    preemption.install()  # inside a submitit SLURM job: checkpoint before requeueing
    if faults.stopped(_sweep_dir()):  # an earlier job of a parallel launcher ran out of storage
        return _quietly_ledgered({"run_dir": None, "status": faults.NOT_STARTED}, faults.NOT_STARTED)
    try:
        return _run_claimed(cfg, started)
    except preemption.Preempted as stop:  # the claim is released; the checkpoint is in the run directory
        log.warning("%s", stop)
        append_ledger({"run_dir": stop.run_dir, "status": "preempted", "step": stop.step,
                       "seconds": round(time.perf_counter() - started, 1),
                       "slurm_job": preemption.slurm_job()})
        preemption.hand_over()  # requeues and exits
        raise
    except Exception as exc:  # a write outside a run (claim, ledger) that the filesystem refused
        fault = storage.fault_of(exc, str(cfg.get("results_dir", ".")))
        if fault is None:  # a bug outside the run: Hydra runs the other jobs, then re-raises only the
            # first such exception, so a later job's would be said nowhere: each is logged here
            log.exception("job %s failed outside its run (its claim or the sweep ledger)", " ".join(_job_overrides()))
            raise
        return _stop(fault, started)


def _stop(fault: storage.StorageFault, started: float) -> str:
    """Say the storage fault in one line and stop the sweep: the launcher's own process (basic
    launcher) exits 1 listing the finished runs; a parallel launcher's worker marks the sweep
    stopped so that its later jobs do not start, and the sweep's end lists them."""
    faults.say(fault)
    entry = {"run_dir": fault.run_dir, "status": faults.STOPPED, "error": str(fault),
             "seconds": round(time.perf_counter() - started, 1)}
    _quietly_ledgered(entry, faults.STOPPED)
    faults.mark(_sweep_dir())
    if launchers.current().kind in ("basic", "none"):  # nothing more may start or be written: Hydra's own
        log.error("%s", faults.stop_line(_outcomes.get(_ledger_path(), []), os.environ.get(TOTAL_ENV, "?")))
        raise SystemExit(1)  # files for the next job would meet the same full disk
    return faults.STOPPED


def _quietly_ledgered(entry: dict[str, Any], status: str) -> str:
    """Append ``entry`` to the ledger if the disk takes it (this process keeps it either way); return ``status``."""
    try:
        append_ledger(entry)
    except OSError:
        pass
    return status


def _run_claimed(cfg: DictConfig, started: float) -> str:
    from repeatability.trial import pipeline  # heavy imports torch, transformers only once a job runs

    path: Path | None = None
    try:
        rc: RunConfig = to_run_config(cfg)
        path = artifacts.run_dir(rc.results_dir, rc.study, pipeline.cell_of(rc), rc.trial)
        if _skip_finished(path, cfg):
            return "skipped"
        claim = claims.acquire(path, rc.claim_stale_after_s, rc.claim_heartbeat_s)
    except claims.ClaimHeld as held:
        log.info("%s skipped: %s", _job_progress(), held)
        append_ledger({"run_dir": str(path), "status": "running_elsewhere", "holder": held.holder.where})
        return "running_elsewhere"
    except (ConfigError, RunDirError) as exc:
        return _invalid(exc, path)
    except storage.StorageFault as fault:  # the claim could not be written: run_one stops the sweep
        fault.run_dir = str(path) if path else None
        raise
    with claim:  # heartbeat while the run executes; released (if still ours) whatever happens
        if claim.took_over:
            stale, reason = claim.took_over
            log.warning("%s: took over a stale claim of %s (since %s: %s)", path, stale.where, stale.started_at, reason)
        try:
            if _skip_finished(path, cfg):  # another launcher finished it between the check and the claim
                return "skipped"
            state = artifacts.run_state(path)
            resume_from = _resumable(path, cfg) if state in ("incomplete", "failed") else None
            if resume_from is not None:
                log.info("%s: %s was %s; resuming from its checkpoint at step %d", _job_progress(), path, state,
                         checkpoint_files.checkpoint_step(resume_from))
            elif state in ("incomplete", "failed"):
                log.info("%s: %s was %s; redoing it from scratch", _job_progress(), path, state)
            artifacts.start_fresh(path, keep_checkpoints=resume_from is not None)
        except RunDirError as exc:
            return _invalid(exc, path)
        log.info("%s: %s", _job_progress(), path)
        try:
            status = _execute_isolated(rc, cfg, path, claim, resume_from)
        finally:
            release_memory()
    append_ledger({"run_dir": str(path), "status": status, "seconds": round(time.perf_counter() - started, 1),
                    **({"took_over": claim.took_over[0].where} if claim.took_over else {})})
    return status


def _skip_finished(path: Path, cfg: DictConfig) -> bool:
    """True (logged, in the ledger) for a finished run of the same config whose files verify.

    Raises:
        RunDirError: a finished run of another config, or one corrupted since it finished.
    """
    state = artifacts.run_state(path)
    if state not in artifacts.FINISHED_STATUSES:
        return False
    integrity.verify_manifest(path)  # first: a corrupted config.yaml is not "another config"
    _check_same_config(path, cfg)
    log.info("%s skipped: %s already %s", _job_progress(), path, state)
    append_ledger({"run_dir": str(path), "status": "skipped", "was": state})
    return True


def _invalid(exc: Exception, path: Path | None) -> str:
    log.error("error: %s", exc)
    append_ledger({"run_dir": str(path) if path else None, "status": "invalid", "error": str(exc)})
    return "invalid"


def _resumable(path: Path, cfg: DictConfig) -> Path | None:
    """The last complete checkpoint of an unfinished run, if it ran this very config."""
    checkpoint = checkpoint_files.latest_checkpoint(path)
    if checkpoint is None or not (path / artifacts.CONFIG).exists():
        return None
    stored = _stored_config(path)
    if _config_fingerprint(stored) != _config_fingerprint(cfg):  # type: ignore[arg-type]
        log.info("%s: its checkpoint is from another config; not resuming", path)
        return None
    return checkpoint


def _execute_isolated(rc: RunConfig, cfg: DictConfig, path: Path, claim: claims.Claim,
                      resume_from: Path | None = None) -> str:
    from repeatability.trial import pipeline

    overrides = _job_overrides()
    try:
        summary = pipeline.execute(rc, OmegaConf.to_yaml(cfg, resolve=True), overrides, path,
                                   resume_from=resume_from, guard=claim.check,
                                   thread_budget=threads.thread_budget(rc.determinism.threads, rc.results_dir))
    except preemption.Preempted as stop:
        stop.run_dir = str(path)
        raise
    except Exception as exc:  # isolate: record and let the sweep go on
        one_line = str(exc).splitlines()[0] if str(exc) else ""
        fault = storage.fault_of(exc, path)
        if fault is not None:  # the filesystem, not the run: record what the disk takes, then stop (run_one)
            _record_fault(rc, path, claim, fault, traceback.format_exc())
            raise fault from (None if fault is exc else exc)
        if isinstance(exc, claims.ClaimLost) or not claim.held():  # the directory is someone else's now
            log.error("%s: this launcher lost its claim (%s); nothing recorded there", path, one_line)
            return "claim_lost"
        if isinstance(exc, ConfigError):
            log.error("error: %s", one_line)
        else:
            log.exception("%s failed", path)
        _record_failed(rc, path, traceback.format_exc(), type(exc).__name__, one_line)
        return "failed"
    m = summary["metrics"]
    log.info("%s %s: ppl(token-weighted) %.4g, ppl(mean per-seq) %.4g, optimizer state %s-bit (%.0f%% of params), "
             "paging effective %s, %.0fs", path, summary["status"], m.get(N.perplexity_token_weighted, float("nan")),
             m.get(N.perplexity_mean_per_sequence, float("nan")), summary["optimizer"]["effective"]["bits"],
             100 * summary["optimizer"]["effective"]["state_8bit_param_fraction"],
             summary["optimizer"]["effective"]["paging_effective"], summary["timings"]["total_s"])
    return summary["status"]


def _record_failed(rc: RunConfig, path: Path, trace: str, kind: str, one_line: str) -> None:
    """``error.txt`` (the traceback) and a failed summary: the run is redone, or resumed, on re-run."""
    artifacts.write_error(path, trace)
    artifacts.write_summary(path, {"study": rc.study, "trial": rc.trial, "cell": asdict(artifacts.cell_of(rc)),
                                   "status": "failed", "error": {"type": kind, "message": one_line}})


def _record_fault(rc: RunConfig, path: Path, claim: claims.Claim, fault: storage.StorageFault, trace: str) -> None:
    """Free the torn checkpoint, then record the run as failed if the disk takes it: a run left
    incomplete instead resumes the same way, and either way nothing is marked done."""
    fault.run_dir = str(path)
    faults.free_torn(path)
    if not claim.held():
        return
    try:
        _record_failed(rc, path, trace, "StorageFault", str(fault))
    except OSError:  # the disk takes nothing more (a StorageFault is an OSError): no second traceback
        pass


def release_memory() -> None:
    """Give the last job's memory back before the next job of the same process starts.

    Hydra's basic launcher runs every job in one process. Together with
    ``modelling.release_weights`` (the main cause: a leaked module kept its weights alive) this
    keeps resident memory flat across jobs: measured 607, 617, 624 MB after three SmolLM2 jobs,
    where it had grown 2.5 -> 6.1 GB over the 14 runs of the default study.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def _job_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries; a line a full disk cut short is left out."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def summarize(entries: list[dict[str, Any]], elapsed_s: float) -> tuple[str, list[str]]:
    """One line of counts and the list of runs that need attention.

    A run is counted once, by its last ledger line: a run that was preempted and then finished in
    the requeued job is one complete run (its earlier preemption is named after the counts)."""
    last: dict[Any, dict[str, Any]] = {}
    for i, e in enumerate(entries):
        last[e.get("run_dir") or ("entry", i)] = e  # a line without a run directory is its own run
    final = list(last.values())
    counts: dict[str, int] = {}
    for e in final:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    bad = [f"{e['status']}: {e.get('error') or e.get('run_dir')}" for e in final if e["status"] in BAD_STATUSES]
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    resumed = sum(e["status"] == "preempted" for e in entries) - counts.get("preempted", 0)
    extra = f"; {resumed} preemption(s) resumed" if resumed else ""
    return f"sweep finished: {len(final)} runs ({parts}{extra}) in {elapsed_s / 60:.1f} min", bad


class SweepReport(Callback):
    """Prints the sweep's outcome and makes the command fail when any run failed."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(Path(config.hydra.sweep.dir) / LEDGER)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(Path(config.hydra.run.dir).parent / LEDGER)

    def _finish(self, ledger: Path) -> None:
        entries = read_ledger(ledger)
        if faults.stopped(ledger.parent) or any(e["status"] == faults.STOPPED for e in entries):
            log.error("%s", faults.stop_line(entries, os.environ.get(TOTAL_ENV, "?")))  # the job said why
            raise SystemExit(1)
        line, bad = summarize(entries, time.perf_counter() - self.start)
        log.info(line)
        elsewhere = sum(e["status"] == "running_elsewhere" for e in entries)
        if elsewhere:
            log.info("%d run(s) were running in another launcher; re-run the same command after it ends to "
                     "check that they finished", elsewhere)
        if bad:
            for b in bad:
                log.error("  %s", b)
            lost = sum(b.startswith(f"{slurm_wait.LOST}: ") for b in bad)
            if len(bad) > lost:
                log.error("%d run(s) failed; see error.txt in each run directory, fix, and re-run the same command "
                          "(finished runs are skipped)", len(bad) - lost)
            if lost:
                log.error("%d run(s) lost: SLURM stopped answering about their jobs; re-run the same command once it "
                          "answers: a lost run whose job is gone is taken over, one still running is left to it",
                          lost)
            raise SystemExit(1)  # not an Exception: Hydra's error wrapper lets it through
