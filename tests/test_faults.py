"""Faults a long sweep meets: a disk that fills up, a kill, a bug (fast tier, tiny Llama).

At each write site of a run the filesystem runs out of space (ENOSPC, as the writer there
raises it: ``OSError`` from fsync or open, torch.save's errno-less ``RuntimeError``,
safetensors' ``SafetensorError``) and stays full for the rest of the sweep. Each case checks
that the sweep says so in one ``error:`` line naming the file, its filesystem and its free space,
with no traceback; that it stops, listing the runs that finished; that no run is marked complete
without every file its manifest lists; and that the same command, once there is space again,
finishes the run with the adapter SHA-256 and loss curve of an uninterrupted run, executing
nothing twice (a finished run is skipped, the stopped one resumes from its last checkpoint).

At each of the same write sites a run is also killed by SIGKILL (in a child forked per job) and
meets a plain bug (a ``RuntimeError`` raised by that write), all in one sweep; a report built
before the re-run lists every interrupted run that is there as unfinished, and the re-run
finishes each with the uninterrupted run's adapter SHA-256 and loss curve, nothing run twice.
Preflight's estimate of a study's bytes, the report written aside, and a real full tmpfs too.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repeatability.config.run import to_run_config
from repeatability.launching import footprint, preflight, sweep
from repeatability.records import artifacts, curve_files, integrity, storage
from tests.conftest import ROOT, run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"
STUDY = "s"
STEPS, EVERY = 4, 2  # checkpoints at steps 2 and 4
ENOSPC = os.strerror(errno.ENOSPC)


def _args(model: Path, data: Path, results: Path, **extra: Any) -> list[str]:
    return [f"study={STUDY}", *tiny_overrides(model, data, results, **{
        "train.max_steps": STEPS, "train.checkpoint_every": EVERY, **extra})]


def _curve(run: Path) -> list[tuple]:
    """The loss curve without its wall-clock column."""
    return [(r["step"], r["split"], r["loss"], r["learning_rate"], r["grad_norm"])
            for r in curve_files.read_loss_curve(run)]


@pytest.fixture(scope="module", autouse=True)
def _cheaper_commands() -> Iterator[None]:
    """What each command of this module repeats to no purpose here, done once: reading the
    installed distributions (the lock check, twice a command; nothing is installed meanwhile),
    Hydra's composing every job before its launcher composes it again (preflight has composed
    each one already), and each job's gc.collect walking this process's older objects."""
    from hydra.plugins.sweeper import Sweeper

    from repeatability.records import lock

    have = lock.installed()
    gc.freeze()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lock, "installed", lambda: dict(have))
        mp.setattr(Sweeper, "validate_batch_is_legal", lambda self, batch: None)
        yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trials 1 and 2, uninterrupted: the study every faulted one must end up equal to."""
    results = tmp_path_factory.mktemp("reference")
    assert run_cli(["-m", "trial=1,2", *_args(tiny_model_dir, quotes_jsonl, results)]) == 0
    return results / STUDY / CELL


class Disk:
    """The results folder's filesystem, filling up at the ``nth`` write whose path contains
    ``where``: that write and every later one under ``root`` fail as on a full disk, and
    ``shutil.disk_usage`` says 0 bytes free, until :meth:`free` is called."""

    def __init__(self, root: Path, where: str, nth: int = 1) -> None:
        self.root, self.where, self.nth = str(root), where, nth
        self.seen, self.full, self.refused = 0, False, []

    def write(self, path: str | os.PathLike) -> None:
        """Raise ``OSError(ENOSPC)`` if this write of ``path`` does not fit."""
        path = os.fspath(path)
        if not self.full and self.where in path:
            self.seen += 1
            self.full = self.seen >= self.nth
        if self.full and path.startswith(self.root):
            self.refused.append(path)
            raise OSError(errno.ENOSPC, ENOSPC)

    def free(self) -> None:
        self.full = False
        self.where = "\0"  # never again


def _install(disk: Disk | Tripwire, monkeypatch: pytest.MonkeyPatch) -> None:
    """Route every writer of a run through ``disk``, each failing as its real one does."""
    import peft.peft_model
    import torch
    from safetensors import SafetensorError

    real_fsync, real_usage, real_save, real_st = os.fsync, shutil.disk_usage, torch.save, peft.peft_model.safe_save_file

    def fsync(fd: int) -> None:  # the contract's atomic writes (JSON, CSV, JSONL, text, claims)
        disk.write(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def torch_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:  # the Trainer's checkpoint files
        if isinstance(f, (str, os.PathLike)):
            try:
                disk.write(f)
            except OSError:
                Path(f).write_bytes(b"PK\3\4 torn")  # what a full disk leaves of a torch file
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None
        real_save(obj, f, *args, **kwargs)

    def safe_save(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:  # PEFT's adapter weights
        try:
            disk.write(filename)
        except OSError:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)") from None
        real_st(tensors, filename, *args, **kwargs)

    def ledger_open(file: Any, *args: Any, **kwargs: Any) -> Any:  # the sweep ledger's appends
        disk.write(file)
        return open(file, *args, **kwargs)

    def usage(path: Any) -> Any:
        real = real_usage(path)
        if disk.full and os.fspath(path).startswith(disk.root):
            return type(real)(real.total, real.total, 0)
        return real

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(peft.peft_model, "safe_save_file", safe_save)
    monkeypatch.setattr(sweep, "open", ledger_open, raising=False)
    monkeypatch.setattr(shutil, "disk_usage", usage)


def _count_executions(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Trials whose pipeline really ran (a skipped run never gets there)."""
    from repeatability.trial import pipeline

    ran: Counter = Counter()
    real = pipeline.execute

    def execute(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        ran[cfg.trial] += 1
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline, "execute", execute)
    return ran


@dataclass(frozen=True)
class Site:
    """Where the disk fills up: the write, the file the error line names, and the step the
    re-run resumes from (None: from scratch; -1: nothing left to run)."""

    where: str
    named: str
    resumes_from: int | None
    nth: int = 1


T2 = f"{CELL}/trial-02"
SITES = {
    "claim": Site(f"{CELL}/.trial-02.claim.", f"{CELL}/trial-02.claim", None),
    "config": Site(f"{T2}/.config.yaml.", f"{T2}/config.yaml", None),
    "checkpoint": Site(f"{T2}/checkpoints/checkpoint-4/optimizer.pt", f"{T2}/checkpoints/checkpoint-4", 2),
    "resume_state": Site(f"{T2}/checkpoints/checkpoint-4/.repeatability_state.json.",
                         f"{T2}/checkpoints/checkpoint-4/repeatability_state.json", 2),
    "adapter": Site(f"{T2}/.adapter.tmp/adapter_model.safetensors", f"{T2}/adapter", STEPS),
    "loss_curve": Site(f"{T2}/.loss_curve.csv.", f"{T2}/loss_curve.csv", STEPS),
    "generations": Site(f"{T2}/.generations.jsonl.", f"{T2}/generations.jsonl", STEPS),
    "summary": Site(f"{T2}/.summary.json.", f"{T2}/summary.json", STEPS),
    "manifest": Site(f"{T2}/.MANIFEST.json.", f"{T2}/MANIFEST.json", STEPS),
    "done": Site(f"{T2}/.DONE.", f"{T2}/DONE", STEPS),
    # trial-01's "skipped" line is the first; trial-02's "complete" the second: it finished
    "ledger": Site(sweep.LEDGER, sweep.LEDGER, -1, nth=2),
}


def _one_error_line(capsys: pytest.CaptureFixture) -> tuple[str, str]:
    """The sweep's one ``error:`` line, and its stdout; no traceback anywhere."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "Logging error" not in out + err, err[-3000:]
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0], out


def _check_integrity(study: Path) -> None:
    """No run is marked done without every file the contract and its manifest list."""
    for run in artifacts.iter_run_dirs(study):
        if (run / artifacts.DONE).exists():
            assert all((run / f).exists() for f in artifacts.RUN_FILES), run
            assert integrity.verify_manifest(run)
        else:
            assert artifacts.run_state(run) in ("incomplete", "failed")


def _report_in_between(study: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """What a report of ``study`` built now says of its runs (the numbers it presents, figures
    not drawn): each run's status in its runs table, and what its section "What could not run
    as asked" lists (detail by issue), both by run (``<cell>/trial-NN``)."""
    from analysis.compute.results import compute
    from analysis.load import load_study
    from analysis.present.sections_runs import run_issues

    results = compute(load_study(study))
    issues: dict[str, dict[str, str]] = {}
    for row in run_issues(results.study.runs).itertuples():  # the table of section "not_as_asked"
        issues.setdefault(row.run, {})[row.issue] = row.detail
    return dict(zip(results.study.runs["run"], results.study.runs["status"])), issues


HALF_FINISHED = "no DONE marker: half-finished; re-run the study to redo it"  # the report's detail of such a run


def _check_reported(statuses: dict[str, str], issues: dict[str, dict[str, str]], run: str, state: str,
                    detail: str = HALF_FINISHED) -> None:
    """The report built in between (:func:`_report_in_between`) shows ``run`` as the contract
    has it: an absent run not at all, a complete one finished, an unfinished one (``state``
    incomplete or failed) in its runs table and under "What could not run as asked"."""
    if state == "absent":
        assert run not in statuses and run not in issues
    elif state == "complete":
        assert statuses[run] == "complete" and not {"incomplete", "failed"} & set(issues.get(run, {}))
    else:
        assert statuses[run] == state and issues[run][state] == detail, (statuses.get(run), issues.get(run))


@pytest.mark.parametrize("site", list(SITES), ids=list(SITES))
def test_a_full_disk_stops_the_sweep_in_one_line_and_the_rerun_finishes_it(
        site: str, reference: Path, tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    where = SITES[site]
    shutil.copytree(reference / "trial-01", tmp_path / STUDY / CELL / "trial-01")  # finished before the fault
    args = ["-m", "trial=1,2", *_args(tiny_model_dir, quotes_jsonl, tmp_path)]
    ran = _count_executions(monkeypatch)
    disk = Disk(tmp_path, where.where, where.nth)
    _install(disk, monkeypatch)
    capsys.readouterr()

    assert run_cli(args) == 1
    assert disk.refused, "the fault never fired"
    line, out = _one_error_line(capsys)
    mount = storage.mount_point(tmp_path)
    assert line.startswith(f"error: disk full: cannot write {tmp_path / STUDY}/"), line
    assert f"{where.named} ({ENOSPC}); its filesystem {mount} has 0 B free of " in line, line
    assert "re-run the same command" in line
    finished = f"{CELL}/trial-01 (complete)" + (f", {CELL}/trial-02 (complete)" if where.resumes_from == -1 else "")
    assert f"sweep stopped for want of storage: {1 + (where.resumes_from == -1)} of 2 runs finished: {finished}" in out
    run = tmp_path / STUDY / T2
    state = artifacts.run_state(run)
    if where.resumes_from == -1:
        assert state == "complete"
    else:  # the disk stayed full: error.txt and the failed summary were tried, quietly, and not written
        assert state == ("absent" if site == "claim" else "incomplete")
        assert site == "claim" or any(artifacts.ERROR in path for path in disk.refused)
    if where.resumes_from == 2:  # the torn checkpoint is removed, the complete one before it kept
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    _check_integrity(tmp_path / STUDY)
    statuses, issues = _report_in_between(tmp_path / STUDY)
    assert statuses[f"{CELL}/trial-01"] == "complete"
    _check_reported(statuses, issues, T2, state)

    disk.free()  # space again: the same command
    assert run_cli(args) == 0
    _check_integrity(tmp_path / STUDY)
    for trial in ("trial-01", "trial-02"):
        done, whole = artifacts.read_summary(tmp_path / STUDY / CELL / trial), artifacts.read_summary(reference / trial)
        assert done["status"] == "complete" and done["adapter"]["sha256"] == whole["adapter"]["sha256"]
        assert _curve(tmp_path / STUDY / CELL / trial) == _curve(reference / trial)
    assert (artifacts.read_summary(run)["resumed"] or {}).get("from_step") == (
        None if where.resumes_from in (None, -1) else where.resumes_from)
    # nothing ran twice: trial-01 never, trial-02 once before the fault (unless the fault came first) and once after
    assert ran[1] == 0 and ran[2] == (0 if site == "claim" else 1) + (where.resumes_from != -1)


def test_later_runs_do_not_start(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run that meets a full disk stops the sweep: trial 3 would fail the same way."""
    _install(Disk(tmp_path, SITES["claim"].where), monkeypatch)
    capsys.readouterr()
    assert run_cli(["-m", "trial=2,3", *_args(tiny_model_dir, quotes_jsonl, tmp_path)]) == 1
    line, out = _one_error_line(capsys)
    assert "trial-02.claim" in line
    assert f"0 of 2 runs finished; stopped: {CELL}/trial-02; 1 not started" in out
    assert not (tmp_path / STUDY / CELL / "trial-03").exists() and not (tmp_path / STUDY / CELL / "trial-02").exists()


def test_a_parallel_launchers_later_jobs_do_not_start_and_its_end_lists_the_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """What joblib's workers do (each its own process): the marker stops later jobs, the sweep's
    end prints the stop line from the ledger (a line a full disk cut short is skipped), exit 1."""
    from omegaconf import OmegaConf

    from repeatability.launching import faults

    sweep_dir = tmp_path / "_sweeps" / "2026-01-01_00-00-00_1"
    monkeypatch.setattr(sweep, "_sweep_dir", lambda: sweep_dir)
    monkeypatch.setenv(sweep.TOTAL_ENV, "3")
    sweep.append_ledger({"run_dir": f"/r/s/{CELL}/trial-01", "status": "complete", "seconds": 1.0})
    sweep.append_ledger({"run_dir": f"/r/s/{CELL}/trial-02", "status": faults.STOPPED, "error": "disk full: …"})
    faults.mark(sweep_dir)  # by the worker that met the full disk: another process
    monkeypatch.setattr(faults, "_stopped_sweeps", set())
    with (sweep_dir / sweep.LEDGER).open("a") as fh:
        fh.write('{"run_dir": "/r/s/cut sho')  # torn by the full disk
    assert sweep.run_one(OmegaConf.create({})) == faults.NOT_STARTED  # nothing read, nothing written
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as code:
        sweep.SweepReport()._finish(sweep_dir / sweep.LEDGER)
    assert code.value.code == 1
    assert (f"sweep stopped for want of storage: 1 of 3 runs finished: {CELL}/trial-01 (complete); "
            f"stopped: {CELL}/trial-02; 1 not started") in caplog.text


# --------------------------------------------------------------------------- a kill or a bug at each write

KINDS = ("sigkill", "exception")
CHILD_LIMIT_S = 900  # one tiny run up to its fault: seconds on a quiet machine, minutes at nice 19 on a busy one
BUG = "injected bug: writing "


def _variant(kind: str, site: str) -> str:
    """The cell label of the run faulted by ``kind`` at ``site``: one cell per case, one study."""
    return f"{kind}-{site}"


class Tripwire:
    """At the first write of ``SITES[site].where`` (in its own cell) of the job whose variant
    names ``kind`` and ``site``, a ``sigkill`` kills the process (a torch or safetensors file is
    left torn, as a kill mid-write leaves it; an atomic write leaves its temporary file); an
    ``exception`` raises a plain ``RuntimeError`` there, once, as a bug in that writer would."""

    full = False  # the disk has room: _install's disk_usage stays real

    def __init__(self, cases: list[tuple[str, str]]) -> None:
        self.cases = {_variant(kind, site): (kind, site) for kind, site in cases}
        self.job: str | None = None  # the variant of the job running now
        self.fired: dict[str, str] = {}  # variant -> path (in this process)

    def write(self, path: str | os.PathLike) -> None:
        path, job = os.fspath(path), self.job
        if job not in self.cases or job in self.fired:
            return
        kind, site = self.cases[job]
        # trial-02 is the only run of its cell: its first ledger line is the one to fault (no trial-01 before it)
        if SITES[site].where.replace(f"{CELL}/", f"{CELL}__{job}/") not in path:
            return
        self.fired[job] = path
        if kind == "exception":
            raise RuntimeError(f"{BUG}{path}")
        if path.endswith((".pt", ".safetensors")):
            Path(path).write_bytes(b"PK\3\4 torn")
        os.kill(os.getpid(), signal.SIGKILL)


def _jobs_in_children(tripwire: Tripwire, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Run each ``sigkill`` job in a child forked from this process (torch, the model's imports
    and Hydra's composition already paid; a subprocess would import them again) and return the
    children's exit codes by variant; every other job runs here."""
    real, exits = sweep.run_one, {}

    def run_one(cfg: Any) -> str:
        tripwire.job = cfg.variant
        if tripwire.cases.get(cfg.variant, ("",))[0] != "sigkill":
            return real(cfg)
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 70
            signal.alarm(CHILD_LIMIT_S)  # a child that hangs fails its case (killed by SIGALRM), not the session
            try:
                real(cfg)
                code = 0
            finally:
                os._exit(code)
        exits[cfg.variant] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return "killed"

    monkeypatch.setattr(sweep, "run_one", run_one)
    return exits


def _log_executions(log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Append the variant of every run whose pipeline really starts to ``log_file``, before it
    starts: a line a killed child wrote is still there."""
    from repeatability.trial import pipeline

    real = pipeline.execute

    def execute(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        with log_file.open("a") as fh:
            fh.write(f"{cfg.variant}\n")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline, "execute", execute)


def _executions(log_file: Path) -> Counter:
    return Counter(log_file.read_text().split()) if log_file.exists() else Counter()


@dataclass
class Interrupted:
    """One study of trial 2 in a cell per (kind, site), faulted by one sweep, reported on, then
    re-run by the same command; what each step left."""

    study: Path
    exits: dict[str, int]  # sigkill children's exit codes
    fault_rc: int
    fault_out: str  # the faulted command's stdout and stderr (not its children's)
    rerun_rc: int
    state: dict[str, str]  # run_state after the fault
    checkpoints: dict[str, dict[str, bool]]  # checkpoint folders after the fault: complete (holds its resume state)?
    ledger: dict[str, str]  # the faulted sweep's ledger: status by variant
    errors: dict[str, tuple[dict, str]]  # failed runs: the summary's error, error.txt's last line
    statuses: dict[str, str]  # a report built in between: its runs' status, by run (<cell>/trial-NN)
    issues: dict[str, dict[str, str]]  # and what it lists as not run as asked: detail by issue, by run
    rendered: set[tuple[str, str, str]]  # that list as report.md shows it: (cell, issue, trials)
    ran_before: Counter  # pipeline executions by variant, up to the fault
    ran_after: Counter  # and in the re-run


CASES = [(kind, site) for kind in KINDS for site in SITES]


def _rendered_not_as_asked(study: Path) -> set[tuple[str, str, str]]:
    """The rows (cell, issue, trials) of the table under "What could not run as asked" in the
    report that ``python -m analysis.report`` writes now."""
    from analysis import report

    assert report.main([str(study), "--no-reference"]) == 0
    text = (artifacts.report_dir(study) / "report.md").read_text()
    section = text.split("## What could not run as asked\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")]
    assert rows[0][:3] == ["cell", "issue", "trials"], rows[0]
    return {(cell, issue, trials) for cell, issue, trials, *_ in rows[1:]}


@pytest.fixture(scope="module")
def interrupted(reference: Path, tiny_model_dir: Path, quotes_jsonl: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Interrupted:
    """All cases in one sweep (each in its own cell), one report, one re-run: a command per
    case would pay Hydra's composition, preflight and the lock check 22 times more."""
    results = tmp_path_factory.mktemp("interrupted")
    study, variants = results / STUDY, [_variant(kind, site) for kind, site in CASES]
    args = ["-m", "trial=2", f"variant={','.join(variants)}", *_args(tiny_model_dir, quotes_jsonl, results)]
    ran = results / "executions.txt"
    gc.freeze()  # what the reference run left, too (_cheaper_commands unfreezes it)
    with pytest.MonkeyPatch.context() as mp:
        tripwire = Tripwire(CASES)
        _install(tripwire, mp)
        exits = _jobs_in_children(tripwire, mp)
        _log_executions(ran, mp)
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
            fault_rc = run_cli(args)
    ran_before = _executions(ran)
    _check_integrity(study)
    runs = {v: study / f"{CELL}__{v}" / "trial-02" for v in variants}
    state = {v: artifacts.run_state(run) for v, run in runs.items()}
    checkpoints = {v: {p.name: (p / artifacts.RESUME_STATE).exists() for p in (run / artifacts.CHECKPOINTS).glob("*")}
                   for v, run in runs.items()}
    errors = {v: (artifacts.read_summary(run)["error"], (run / artifacts.ERROR).read_text().splitlines()[-1])
              for v, run in runs.items() if state[v] == "failed"}
    [ledger_file] = study.glob(f"_sweeps/*/{sweep.LEDGER}")
    ledger = {Path(e["run_dir"]).parent.name.removeprefix(f"{CELL}__"): e["status"]
              for e in sweep.read_ledger(ledger_file)}
    statuses, issues = _report_in_between(study)
    rendered = _rendered_not_as_asked(study)
    ran.unlink()
    with pytest.MonkeyPatch.context() as mp:
        _log_executions(ran, mp)
        rerun_rc = run_cli(args)  # the same command
    _check_integrity(study)
    return Interrupted(study, exits, fault_rc, out.getvalue(), rerun_rc, state, checkpoints, ledger, errors, statuses,
                       issues, rendered, ran_before, _executions(ran))


def _expected_state(kind: str, site: str) -> str:
    """What a run faulted at ``site`` is, to the contract, until it is re-run."""
    if site == "claim":  # killed or failing before the run directory exists
        return "absent"
    if SITES[site].resumes_from == -1:  # its ledger line comes after DONE
        return "complete"
    return "incomplete" if kind == "sigkill" else "failed"


@pytest.mark.parametrize("kind,site", CASES, ids=[_variant(kind, site) for kind, site in CASES])
def test_a_run_killed_or_failing_at_a_write_is_reported_unfinished_and_the_rerun_finishes_it(
        kind: str, site: str, interrupted: Interrupted, reference: Path) -> None:
    got, v, where = interrupted, _variant(kind, site), SITES[site]
    run = got.study / f"{CELL}__{v}" / "trial-02"
    if kind == "sigkill":
        assert got.exits[v] == -signal.SIGKILL, "the child was not killed at the write"
    state = _expected_state(kind, site)
    assert got.state[v] == state
    if state == "failed":  # recorded as the sweep records any exception of a run: error.txt and a failed summary
        error, last_line = got.errors[v]
        assert error["type"] == "RuntimeError" and error["message"].startswith(f"{BUG}{run}/"), error
        assert last_line == f"RuntimeError: {error['message']}"
        assert got.ledger[v] == "failed"
    else:  # killed before its ledger line, or the ledger line is the write that failed
        assert v not in got.ledger
    detail = f"RuntimeError: {got.errors[v][0]['message']}" if state == "failed" else HALF_FINISHED
    _check_reported(got.statuses, got.issues, f"{CELL}__{v}/trial-02", state, detail)
    listed = {issue for cell, issue, trials in got.rendered if cell == f"{CELL}__{v}" and trials == "2"}
    assert listed & {"incomplete", "failed"} == ({state} if state in ("incomplete", "failed") else set())
    # the checkpoints left (complete or not): the re-run resumes from the last complete one and saves over a torn one
    assert got.checkpoints[v] == ({} if where.resumes_from in (None, -1) else
                                  {"checkpoint-2": True, "checkpoint-4": where.resumes_from == STEPS})

    assert got.rerun_rc == 0
    done, whole = artifacts.read_summary(run), artifacts.read_summary(reference / "trial-02")
    assert done["status"] == "complete" and done["adapter"]["sha256"] == whole["adapter"]["sha256"]
    assert _curve(run) == _curve(reference / "trial-02")
    resumed_from = None if where.resumes_from in (None, -1) else where.resumes_from
    assert (done["resumed"] or {}).get("from_step") == resumed_from
    assert not (run / artifacts.ERROR).exists() and not (run / artifacts.CHECKPOINTS).exists()
    # nothing ran twice: once up to the fault (unless it came first), once in the re-run (unless it had finished)
    assert (got.ran_before[v], got.ran_after[v]) == (int(site != "claim"), int(where.resumes_from != -1))


def test_the_faulted_sweep_goes_on_past_every_fault(interrupted: Interrupted) -> None:
    """Every job ran (a killed child or a failed run does not end the sweep); a bug outside a
    run (the claim's, the ledger's) is logged by its job and reaches Hydra, which fails the
    command once all jobs ran, re-raising the first only."""
    assert sorted(interrupted.exits) == sorted(_variant("sigkill", site) for site in SITES)
    assert sorted(v for v, status in interrupted.ledger.items() if status == "failed") == sorted(
        _variant("exception", site) for site in SITES if _expected_state("exception", site) == "failed")
    assert interrupted.fault_rc == 1 and interrupted.rerun_rc == 0
    out, study = interrupted.fault_out, interrupted.study
    # each bug outside a run is logged, with its traceback, by the job that met it ...
    assert out.count("failed outside its run (its claim or the sweep ledger)") == 2
    assert f"RuntimeError: {BUG}{study}/{CELL}__{_variant('exception', 'claim')}/.trial-02.claim." in out
    assert re.search(rf"RuntimeError: {re.escape(f'{BUG}{study}/_sweeps/')}[^/\s]+/{sweep.LEDGER}\n", out)
    # ... and Hydra fails the command with the first one once every job has run: no end-of-sweep summary
    [hydra_error] = [line for line in out.splitlines() if line.startswith("Error executing job with overrides: ")]
    assert f"'variant={_variant('exception', 'claim')}'" in hydra_error
    assert "sweep finished:" not in out and "sweep stopped" not in out


def test_storage_faults_are_told_from_other_errors(tmp_path: Path) -> None:
    """The errno, from an OSError or from the words of a library's own error; anything else passes."""
    fault = storage.StorageFault(tmp_path / "x", errno.ENOSPC)
    assert str(fault).startswith(f"disk full: cannot write {tmp_path / 'x'} ({ENOSPC}); its filesystem /")
    assert storage.fault_errno(RuntimeError("Error while serializing: I/O error: (os error 122)")) == errno.EDQUOT
    assert storage.fault_errno(OSError(errno.EROFS, "ro")) == errno.EROFS
    assert storage.fault_errno(ValueError("no errno")) is None
    with pytest.raises(storage.StorageFault) as got, storage.writing(tmp_path / "y"):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert str(got.value).startswith(f"I/O error: cannot write {tmp_path / 'y'}")
    with pytest.raises(KeyError), storage.writing(tmp_path / "y"):  # not the filesystem's: passes as it is
        raise KeyError("bug")
    torch_failed = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(storage.StorageFault) as got, storage.writing(tmp_path / "z.pt"):
        raise torch_failed  # no errno, but torch says its write failed: with room left, an I/O error
    assert got.value.errno == errno.EIO or storage.usage(tmp_path)[0] < storage.FULL_BELOW


# --------------------------------------------------------------------------- preflight's estimate


def _configs(model: Path, data: Path, results: Path, trials: str = "1,2", **extra: Any) -> list[Any]:
    return preflight.compose_jobs([f"trial={trials}", *_args(model, data, results, **extra)], multirun=True)


def test_the_estimate_covers_what_a_run_writes(reference: Path, tiny_model_dir: Path, quotes_jsonl: Path,
                                                tmp_path: Path) -> None:
    """Not below what a real run wrote (its checkpoints' recorded bytes, its finished files), and
    not more than twice it: conservative, not a refusal of everything."""
    [cfg] = [to_run_config(c) for c in _configs(tiny_model_dir, quotes_jsonl, tmp_path, "2")]
    est = footprint.run_footprint(cfg, n_train=100,
                                  prompts=["Your silence will", "Let the improvement of yourself keep you"])
    summary = artifacts.read_summary(reference / "trial-02")
    saved = max(c["bytes"] for c in summary["checkpointing"]["saved"])
    assert est.shape_known and saved <= est.checkpoint <= 2 * saved
    written = sum(f.stat().st_size for f in (reference / "trial-02").rglob("*") if f.is_file())
    assert written <= est.after <= 2 * written + footprint.SMALL_FILES
    adapter = sum(f.stat().st_size for f in (reference / "trial-02" / artifacts.ADAPTER).rglob("*"))
    assert adapter <= est.adapter <= 1.2 * adapter
    assert est.live_checkpoints == 2 and est.kept_checkpoints == 0  # 2 saves in 4 steps
    assert footprint.study_bytes([est, est], at_once=1) == 2 * est.after + 2 * est.checkpoint


def _fake_free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type(real(p))(10 * 2**30, 10 * 2**30 - free, free))


def test_preflight_refuses_a_study_that_cannot_fit(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_free(monkeypatch, 2 * 2**20)  # 2 MiB: less than two tiny runs need
    capsys.readouterr()
    assert run_cli(["-m", "trial=1,2", *_args(tiny_model_dir, quotes_jsonl, tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    assert f"error: results_dir={tmp_path} cannot hold this study: about " in errors[0]
    assert "2 run(s) to do" in errors[0] and "up to 2 checkpoints of" in errors[0]
    assert f"its filesystem {storage.mount_point(tmp_path)} has 2.0 MiB free" in errors[0]
    assert not tmp_path.exists() or not any(tmp_path.rglob("summary.json")), "nothing may run"


def test_preflight_counts_only_the_runs_still_to_do(reference: Path, tiny_model_dir: Path, quotes_jsonl: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished study needs no space: every run is skipped."""
    results = reference.parent.parent
    configs = [to_run_config(c) for c in _configs(tiny_model_dir, quotes_jsonl, results)]
    _fake_free(monkeypatch, 0)
    preflight._check_space(configs, 1, {preflight._data_key(c): 100 for c in configs})  # finished: passes
    more = [to_run_config(c) for c in _configs(tiny_model_dir, quotes_jsonl, results, "1,2,3")]
    with pytest.raises(preflight.ConfigError, match=r"1 run\(s\) to do"):
        preflight._check_space(more, 1, {preflight._data_key(c): 100 for c in more})


# --------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study of every kind of run, with its report built once."""
    from analysis import report
    from tests.analysis_fixtures import write_mixed_study

    study = write_mixed_study(tmp_path_factory.mktemp("reported"))
    assert report.main([str(study), "--no-reference"]) == 0
    return study


@pytest.fixture
def study(reported: Path, tmp_path: Path) -> Path:
    """A copy of :func:`reported` (its previous report included) for one test to break."""
    return Path(shutil.copytree(reported, tmp_path / reported.name))


def _report_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_full_disk_leaves_the_previous_report_whole(study: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis import report

    out = artifacts.report_dir(study)
    before = _report_files(out)
    real = report.write_table
    calls = []

    def write_table(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, ENOSPC)
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "write_table", write_table)
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        report.main([str(study), "--no-reference"])
    assert code.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith(f"error: disk full: cannot write {out} ({ENOSPC})"), errors
    assert "the previous report is left as it was" in errors[0]
    assert _report_files(out) == before  # whole, and no staging folder left


def test_a_report_build_killed_midway_leaves_the_previous_report_whole(study: Path) -> None:
    from analysis import report

    out = artifacts.report_dir(study)
    before = _report_files(out)
    killed = ("import os, signal; from analysis import report; "  # SIGKILL once report.html is written
              "report.render_markdown = lambda doc: os.kill(os.getpid(), signal.SIGKILL); "
              f"report.main([{str(study)!r}, '--no-reference'])")
    proc = subprocess.run([sys.executable, "-c", killed], cwd=ROOT, capture_output=True, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    staged = [k for k in _report_files(out) if k.startswith(report.STAGING)]
    assert any(k.endswith("report.html") for k in staged)  # killed midway: the new report half written
    assert {k: v for k, v in _report_files(out).items() if k not in staged} == before  # the previous one whole
    assert report.main([str(study), "--no-reference"]) == 0
    assert not list(out.glob(f"{report.STAGING}*"))  # the next build removes what the killed one left


# --------------------------------------------------------------------------- a real full filesystem


@pytest.fixture
def tmpfs(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs (root only): room for two of the tiny run's 0.9 MiB checkpoints at most, where
    the Trainer holds three; skipped, saying why, where it cannot be mounted."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}): needs root and mount(8)")
    yield mount
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's job log file, still open on the tmpfs
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(str(mount)):
            handler.close()
            root.removeHandler(handler)
    if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # still busy: detach it


def test_a_real_full_tmpfs(tmpfs: Path, reference: Path, tiny_model_dir: Path, quotes_jsonl: Path,
                           capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Preflight refuses the study; forced past it, the run meets ENOSPC for real: one line, no
    traceback; after growing the filesystem the same command finishes it to the same bits."""
    args = ["trial=1", *_args(tiny_model_dir, quotes_jsonl, tmpfs, **{"train.checkpoint_every": 1})]
    capsys.readouterr()
    assert run_cli(args) == 2
    assert "cannot hold this study" in capsys.readouterr().err
    monkeypatch.setattr(preflight, "_check_space", lambda *a: None)  # as if the estimate had been wrong
    assert run_cli(args) == 1
    line, _ = _one_error_line(capsys)
    assert line.startswith("error: disk full: cannot write ") and f"its filesystem {tmpfs} has " in line, line
    _check_integrity(tmpfs / STUDY)
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)
    assert run_cli(args) == 0
    run = tmpfs / STUDY / CELL / "trial-01"
    sha = artifacts.read_summary(reference / "trial-01")["adapter"]["sha256"]
    assert artifacts.read_summary(run)["adapter"]["sha256"] == sha
    assert _curve(run) == _curve(reference / "trial-01")
