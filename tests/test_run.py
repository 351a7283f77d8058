"""End-to-end runs of the real command line on the tiny Llama (fast tier)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from repeatability.launching import claims
from repeatability.records import adapter_files, artifacts, curve_files, integrity, lock
from tests.conftest import run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"
EXPECTED_FILES = {
    "summary.json", "loss_curve.csv", "generations.jsonl", "environment.json", "config.yaml",
    "overrides.yaml", "adapter", "MANIFEST.json", "DONE",
}


def _summary(results: Path, study: str, trial: int) -> dict:
    return artifacts.read_summary(results / study / CELL / f"trial-{trial:02d}")


def test_run_directory_has_exactly_the_contract_files(sweep: Path) -> None:
    run = sweep / "a" / CELL / "trial-01"
    assert {p.name for p in run.iterdir()} == EXPECTED_FILES
    assert {p.name for p in (run / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert (run / "DONE").read_text().strip() == "complete"
    assert {p.name for p in run.parent.iterdir()} == {"trial-01", "trial-02", ".claims.lock"}  # claims released
    manifest = artifacts.read_json(run / "MANIFEST.json")["files"]
    assert set(manifest) == {"loss_curve.csv", "generations.jsonl", "environment.json", "config.yaml",
                             "overrides.yaml", *(f"adapter/{p.name}" for p in (run / "adapter").iterdir())}
    assert manifest["adapter/adapter_model.safetensors"] == _summary(sweep, "a", 1)["adapter"]["sha256"]
    assert integrity.verify_manifest(run) is True
    split_files = list((sweep / "a" / "_splits").glob("*.jsonl"))
    assert len(split_files) == 1 and len(split_files[0].read_text().splitlines()) == 12


def test_summary_key_fields(sweep: Path) -> None:
    s = _summary(sweep, "a", 1)
    assert s["schema_version"] == artifacts.SCHEMA_VERSION == 6 and s["status"] == "complete" and s["trial"] == 1
    # the environment against the lock, recorded in environment.json and the summary alike
    env = artifacts.read_environment(sweep / "a" / CELL / "trial-01")
    assert env["lock"] == s["lock"] and s["lock"]["file"] == "requirements/cpu.txt"
    assert s["lock"]["sha256"] == hashlib.sha256((lock.LOCK_DIR / "cpu.txt").read_bytes()).hexdigest()
    assert s["lock"]["matches"] is (not s["lock"]["mismatched"])
    assert s["headline"].startswith("Trial 1 of tiny x tq x paged_adamw_8bit: complete after 4 steps.")
    assert "8-bit Adam state on 100.0% of the trainable parameters" in s["headline"]
    assert "paging requested but not in effect" in s["headline"] and "CPU (" in s["headline"]
    assert s["cell"] == {"model": "tiny", "dataset": "tq", "optim": "paged_adamw_8bit", "variant": ""}
    eff = s["optimizer"]["effective"]
    assert eff["class"] == "bitsandbytes.optim.adamw.AdamW"
    assert eff["bits"] == 8 and eff["state_8bit_param_fraction"] == 1.0  # every LoRA tensor is 512x8
    assert eff["paging_requested"] is True and eff["paging_effective"] is False  # no paging on CPU
    assert s["device"]["type"] == "cpu" and s["device"]["compute_dtype"] == "float32"
    assert s["device"]["n_4bit_layers"] == 2 * 7  # 2 blocks x 7 linear layers in NF4
    assert s["model"]["n_trainable_params"] == 2 * (4 * 2 * 512 * 8 + 3 * (512 * 8 + 1024 * 8))
    m = s["metrics"]
    assert m["heldout_sequences"] == 12 and m["steps"] == 4
    assert 1 < m["perplexity_token_weighted"] < 1e4 and 1 < m["perplexity_mean_per_sequence"] < 1e5
    assert math.isclose(m["perplexity_token_weighted"], math.exp(m["heldout_mean_token_nll"]), rel_tol=1e-9)
    assert m["base_perplexity_token_weighted"] != m["perplexity_token_weighted"]
    assert s["data"]["n_total"] == 120 and s["data"]["n_heldout"] == 24 and s["data"]["split_seed"] == 42
    assert s["seeds"]["policy"] == "per_trial" and s["seeds"]["rules"]["lora_init"] == "trial"
    assert s["determinism"]["torch_num_threads"] == 1
    assert len(artifacts.read_generations(sweep / "a" / CELL / "trial-01")) == 4  # 2 prompts x sampled, greedy
    curve = curve_files.read_loss_curve(sweep / "a" / CELL / "trial-01")
    assert [r["step"] for r in curve if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in curve if r["split"] == "val"] == [2, 4]
    assert all(math.isfinite(r["grad_norm"]) for r in curve if r["split"] == "train")


def test_same_seed_gives_identical_bits_and_curve(sweep: Path) -> None:
    a, b = _summary(sweep, "a", 1), _summary(sweep, "b", 1)
    assert a["adapter"]["sha256"] == b["adapter"]["sha256"]
    curve = lambda s: [(r["step"], r["split"], r["loss"])
                       for r in curve_files.read_loss_curve(sweep / s / CELL / "trial-01")]
    assert curve("a") == curve("b")
    assert a["metrics"]["perplexity_token_weighted"] == b["metrics"]["perplexity_token_weighted"]


def test_different_trials_differ(sweep: Path) -> None:
    one, two = _summary(sweep, "a", 1), _summary(sweep, "a", 2)
    assert one["adapter"]["sha256"] != two["adapter"]["sha256"]
    assert one["seeds"]["lora_init"] != two["seeds"]["lora_init"]
    assert one["metrics"]["perplexity_token_weighted"] != two["metrics"]["perplexity_token_weighted"]


def test_rerun_skips_finished_runs(sweep: Path, tiny_model_dir: Path, quotes_jsonl: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    run = sweep / "a" / CELL / "trial-01"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, sweep)
    assert run_cli(["-m", "trial=1,2", "optim=paged_adamw_8bit", "study=a", *args]) == 0
    out = capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert "run 1/2 (0 skipped, 0 failed so far" in out and "run 2/2 (1 skipped" in out
    assert "2 runs (2 skipped)" in out


def test_finished_run_with_other_config_is_not_overwritten(sweep: Path, tiny_model_dir: Path, quotes_jsonl: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    run = sweep / "b" / CELL / "trial-01"
    sha = adapter_files.adapter_sha256(run)
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, sweep, **{"train.lr": 0.001})
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=b", *args]) == 1
    assert "different config (train.lr)" in capsys.readouterr().out
    assert adapter_files.adapter_sha256(run) == sha


def test_half_finished_run_is_redone(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """Left by a killed launcher: a half-finished directory and its claim (a pid no longer running)."""
    import socket
    import subprocess
    import sys

    run = tmp_path / "s" / CELL / "trial-01"
    run.mkdir(parents=True)
    (run / "stale.txt").write_text("left by a killed run")
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    claims_before = claims._new_holder()
    artifacts.write_json(artifacts.claim_file(run), {**asdict(claims_before), "pid": killed.pid, "pid_started": None})
    assert artifacts.run_state(run) == "incomplete"
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=s",
                    *tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)]) == 0
    assert artifacts.run_state(run) == "complete" and not (run / "stale.txt").exists()
    assert not artifacts.claim_file(run).exists()
    assert (f"took over a stale claim of {socket.gethostname()}/{killed.pid} (since {claims_before.started_at}: "
            f"pid {killed.pid} is no longer running on this host)") in capsys.readouterr().out


def test_failure_is_recorded_and_the_sweep_goes_on(
        tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from repeatability.trial import pipeline

    real = pipeline._score_and_generate

    def flaky(cfg, *args, **kwargs):
        if cfg.variant == "boom":
            raise RuntimeError("injected failure")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_score_and_generate", flaky)
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    assert run_cli(["-m", "study=f", "variant=boom,ok", *args]) == 1  # a failed run fails the command
    failed, ok = (tmp_path / "f" / f"{CELL}__{v}" / "trial-01" for v in ("boom", "ok"))
    assert artifacts.run_state(failed) == "failed" and artifacts.run_state(ok) == "complete"
    s = artifacts.read_summary(failed)
    assert s["error"] == {"type": "RuntimeError", "message": "injected failure"}
    assert "RuntimeError: injected failure" in (failed / "error.txt").read_text()
    assert not (failed / "DONE").exists()
    out = capsys.readouterr().out
    assert "2 runs (1 complete, 1 failed)" in out and f"failed: {failed}" in out


def test_absurd_learning_rate_is_recorded_as_diverged(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """lr=1e30 either drives the loss to NaN (stopped, scoring skipped) or collapses the model to a
    uniform distribution (ppl = vocabulary size 600 > eval.ppl_overflow=500): both are 'diverged'."""
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path,
                          **{"train.lr": 1e30, "train.max_steps": 6, "eval.ppl_overflow": 500})
    assert run_cli(["-m", "study=div", "trial=1,2", *args]) == 0  # diverged is a result, not a failure
    reasons = []
    for trial in (1, 2):
        run = tmp_path / "div" / CELL / f"trial-{trial:02d}"
        s = artifacts.read_summary(run)
        assert artifacts.run_state(run) == "diverged" and s["status"] == "diverged"
        assert s["divergence"]["step"] >= 1
        reasons.append(s["divergence"]["reason"])
    assert any(r.startswith("non-finite") for r in reasons)
    collapsed = [t for t, r in zip((1, 2), reasons) if r.startswith("held-out perplexity")]
    for trial in collapsed:
        ppl = (artifacts.read_summary(tmp_path / "div" / CELL / f"trial-{trial:02d}")
               ["metrics"]["perplexity_token_weighted"])
        assert abs(ppl - 600) < 1  # uniform over the 600-token vocabulary


def test_a_finished_job_leaves_no_weights_alive(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """Hydra's basic launcher runs every job in one process: a job's weights must not outlive it
    (a leaked base-model Embedding used to keep ~520 MB per SmolLM2 run resident)."""
    import gc

    import torch

    assert run_cli(["study=mem", "trial=1", *tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)]) == 0
    gc.collect()
    embedding_sized = [o for o in gc.get_objects() if isinstance(o, torch.nn.Parameter) and o.numel() == 600 * 512]
    assert embedding_sized == []


def test_sweep_line_counts_runs_not_ledger_lines() -> None:
    """A run preempted and then finished by its requeued job is one complete run."""
    from repeatability.launching.sweep import summarize

    entries = [{"run_dir": "a", "status": "preempted", "step": 5}, {"run_dir": "b", "status": "complete"},
               {"run_dir": "a", "status": "complete"},
               {"run_dir": None, "status": "failed", "error": "job 7 CANCELLED"},
               {"run_dir": "c", "status": "preempted", "step": 3}]
    line, bad = summarize(entries, 90.0)
    assert line == "sweep finished: 4 runs (2 complete, 1 failed, 1 preempted; 1 preemption(s) resumed) in 1.5 min"
    assert bad == ["failed: job 7 CANCELLED"]


def test_a_run_without_base_scoring_completes_and_says_so(tiny_model_dir: Path, quotes_jsonl: Path,
                                                          tmp_path: Path) -> None:
    """eval.base_perplexity=false: the run finishes (its headline once crashed formatting the absent
    base perplexity, after all the training) and the headline says the base was not scored."""
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path,
                          **{"train.max_steps": 2, "eval.base_perplexity": "false"})
    assert run_cli(["trial=1", "study=nobase", *args]) == 0
    [run] = list(artifacts.iter_run_dirs(tmp_path / "nobase"))
    s = artifacts.read_summary(run)
    assert s["status"] == "complete" and "base_perplexity_token_weighted" not in s["metrics"]
    assert "(base model not scored: eval.base_perplexity=false)" in s["headline"]
