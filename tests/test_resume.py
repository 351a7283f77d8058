"""Mid-run checkpoints: a run killed with SIGKILL resumes from its last checkpoint and ends
bit for bit where an uninterrupted run with the same seeds ends (fast tier, tiny Llama)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repeatability.records import artifacts, checkpoint_files, curve_files
from tests.conftest import ROOT, run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"
STEPS, EVERY = 12, 4  # killed after checkpoint-8, resumed for the last 4 steps


def _curve(run: Path) -> list[tuple]:
    """The loss curve without its wall-clock column."""
    return [(r["step"], r["split"], r["loss"], r["learning_rate"], r["grad_norm"])
            for r in curve_files.read_loss_curve(run)]


def _kill_after_checkpoint(args: list[str], run: Path, step: int, timeout: float = 300) -> None:
    """Start the real command in a subprocess and SIGKILL it once checkpoint-<step> is complete."""
    marker = checkpoint_files.checkpoint_root(run) / f"checkpoint-{step}" / artifacts.RESUME_STATE
    proc = subprocess.Popen([sys.executable, "-m", "repeatability.run", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("optim,dtype", [("paged_adamw_8bit", "auto"), ("paged_adamw_8bit_bnb041", "auto"),
                                         ("paged_adamw_8bit_bnb041", "float16")])  # fp16: the grad scaler's state too
def test_sigkill_then_resume_equals_an_uninterrupted_run(optim: str, dtype: str, tiny_model_dir: Path,
                                                          quotes_jsonl: Path, tmp_path: Path) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, **{
        "train.max_steps": STEPS, "train.checkpoint_every": EVERY, "train.eval_every": 6, "optim": optim,
        "quant.compute_dtype": dtype})
    cell = CELL if optim == "paged_adamw_8bit" else "tiny__tq__paged_adamw_8bit-maps_bnb_0.41.0"
    assert run_cli(["trial=1", "study=whole", *args]) == 0
    killed = tmp_path / "killed" / cell / "trial-01"
    _kill_after_checkpoint(["trial=1", "study=killed", *args], killed, step=2 * EVERY)
    assert artifacts.run_state(killed) == "incomplete" and not (killed / artifacts.ADAPTER).exists()
    assert run_cli(["trial=1", "study=killed", *args]) == 0  # the same command again

    whole = tmp_path / "whole" / cell / "trial-01"
    s, w = artifacts.read_summary(killed), artifacts.read_summary(whole)
    assert s["resumed"]["from_step"] >= 2 * EVERY and w["resumed"] is None
    assert s["adapter"]["sha256"] == w["adapter"]["sha256"]
    assert _curve(killed) == _curve(whole) and len(_curve(whole)) == STEPS + STEPS // 6
    assert s["metrics"]["perplexity_token_weighted"] == w["metrics"]["perplexity_token_weighted"]
    assert s["optimizer"]["state_maps"] == w["optimizer"]["state_maps"] and s["precision"] == w["precision"]
    # checkpoints are removed once the run is finished, and their cost is recorded
    assert not checkpoint_files.checkpoint_root(killed).exists()
    assert not checkpoint_files.checkpoint_root(whole).exists()
    assert [c["step"] for c in w["checkpointing"]["saved"]] == list(range(EVERY, STEPS + 1, EVERY))
    assert all(c["bytes"] > 0 for c in w["checkpointing"]["saved"])


def test_checkpoints_can_be_kept_and_turned_off(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    kept = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, **{
        "train.max_steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": "true"})
    assert run_cli(["trial=1", "study=kept", *kept]) == 0
    root = checkpoint_files.checkpoint_root(tmp_path / "kept" / CELL / "trial-01")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (root / "checkpoint-4" / artifacts.RESUME_STATE).exists()
    off = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, **{"train.checkpoint_every": 0})
    assert run_cli(["trial=1", "study=off", *off]) == 0
    off_summary = artifacts.read_summary(tmp_path / "off" / CELL / "trial-01")
    assert off_summary["checkpointing"]["saved"] == []
    # saving checkpoints changes nothing in the run: same seeds, same bits
    assert off_summary["adapter"]["sha256"] == artifacts.read_summary(root.parent)["adapter"]["sha256"]


def test_a_checkpoint_of_another_config_is_not_resumed(tiny_model_dir: Path, quotes_jsonl: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, **{
        "train.max_steps": STEPS, "train.checkpoint_every": EVERY})
    run = tmp_path / "c" / CELL / "trial-01"
    _kill_after_checkpoint(["trial=1", "study=c", *args], run, step=EVERY)
    changed = [a for a in args if not a.startswith("train.max_steps=")] + [f"train.max_steps={STEPS + 2}"]
    assert run_cli(["trial=1", "study=c", *changed]) == 0
    assert artifacts.read_summary(run)["resumed"] is None
    assert "checkpoint is from another config; not resuming" in capsys.readouterr().out
