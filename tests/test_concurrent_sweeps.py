"""Two launchers of the same command on one study (issue 8): every run executes exactly once,
every run directory stays consistent; a corrupted finished run is then refused (tiny model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repeatability.records import adapter_files, artifacts, integrity
from tests.conftest import ROOT, run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"
TRIALS = (1, 2, 3, 4)
FINISHED_FILES = {"summary.json", "loss_curve.csv", "generations.jsonl", "environment.json", "config.yaml",
                  "overrides.yaml", "adapter", "MANIFEST.json", "DONE"}


@pytest.fixture(scope="module")
def two_sweeps(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path_factory: pytest.TempPathFactory):
    """``python -m repeatability.run -m trial=1,2,3,4 ... study=x`` started twice, 1 s apart.

    A tiny run takes ~1.5 s here and a launcher ~10 s to start: four trials keep the two
    launchers' job phases overlapping even when the second one starts a few seconds late."""
    results = tmp_path_factory.mktemp("results")
    args = ["-m", "trial=1,2,3,4", "optim=paged_adamw_8bit", "study=x",
            *tiny_overrides(tiny_model_dir, quotes_jsonl, results)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    launchers = []
    for _ in range(2):
        launchers.append(subprocess.Popen([sys.executable, "-m", "repeatability.run", *args], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(1)
    outputs = [p.communicate(timeout=900)[0] for p in launchers]
    return results, launchers, outputs


def _ledgers(results: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((results / "x" / "_sweeps").glob("*/ledger.jsonl"))}


def test_every_run_executes_exactly_once(two_sweeps) -> None:
    results, launchers, outputs = two_sweeps
    assert [p.returncode for p in launchers] == [0, 0], outputs
    ledgers = _ledgers(results)
    # one sweep folder each (<time>_<pid>), even when both start in the same second
    assert sorted(int(name.rsplit("_", 1)[1]) for name in ledgers) == sorted(p.pid for p in launchers)
    entries = [e for es in ledgers.values() for e in es]
    assert all(len(es) == 4 for es in ledgers.values())  # each launcher accounted for all of its jobs
    runs = [str(results / "x" / CELL / f"trial-0{t}") for t in TRIALS]
    executed = sorted(e["run_dir"] for e in entries if e["status"] == "complete")
    assert executed == runs  # every trial exactly once, across both launchers
    others = [e for e in entries if e["status"] != "complete"]
    assert {e["status"] for e in others} <= {"running_elsewhere", "skipped"} and len(others) == 4
    # at least once a launcher met the other one's live claim, and named it by host and pid
    host = socket.gethostname()
    elsewhere = [(sweep, e) for sweep, es in ledgers.items() for e in es if e["status"] == "running_elsewhere"]
    assert elsewhere
    for sweep, entry in elsewhere:
        mine = next(p for p in launchers if sweep.endswith(f"_{p.pid}"))
        other = next(p for p in launchers if p is not mine)
        assert entry["holder"] == f"{host}/{other.pid}"
        assert f"{entry['run_dir']} running elsewhere: {host}/{other.pid}" in outputs[launchers.index(mine)]
    assert not any("redoing it from scratch" in out or "took over" in out for out in outputs)


def test_every_run_directory_is_consistent(two_sweeps) -> None:
    results = two_sweeps[0]
    cell = results / "x" / CELL
    assert {p.name for p in cell.iterdir()} == {*(f"trial-0{t}" for t in TRIALS), ".claims.lock"}  # no claim left
    shas = []
    for trial in TRIALS:
        run = cell / f"trial-0{trial}"
        summary = artifacts.read_summary(run)
        assert {p.name for p in run.iterdir()} == FINISHED_FILES  # no error.txt, no leftovers
        assert (run / "DONE").read_text().strip() == summary["status"] == "complete"
        assert summary["trial"] == trial and summary["error"] is None and summary["metrics"]["steps"] == 4
        assert integrity.verify_manifest(run) is True
        assert summary["adapter"]["sha256"] == adapter_files.adapter_sha256(run)
        shas.append(summary["adapter"]["sha256"])
    assert len(set(shas)) == len(TRIALS)


def test_a_rerun_over_a_corrupted_adapter_refuses_naming_the_file(
        two_sweeps, tiny_model_dir: Path, quotes_jsonl: Path, capsys: pytest.CaptureFixture) -> None:
    results = two_sweeps[0]
    run = results / "x" / CELL / "trial-01"
    weights = run / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, results)
    assert run_cli(["-m", "trial=1,2,3,4", "optim=paged_adamw_8bit", "study=x", *args]) == 1
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if "error: " in ln and "corrupted" in ln]
    assert line.split("] ", 1)[1].startswith(f"error: corrupted finished run: {weights} does not match its SHA-256")
    assert "4 runs (1 invalid, 3 skipped)" in out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing redone or overwritten
