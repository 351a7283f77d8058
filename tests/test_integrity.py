"""Manifests of finished runs, and the sweep's use of claims and manifests (no training: the
run itself is replaced by a fake that writes a finished run through the contract)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from analysis_fixtures import SMOL_8, write_adapter, write_run
from omegaconf import DictConfig, OmegaConf

from analysis.compute.stats import cell_stats
from analysis.load import load_study
from repeatability.launching import claims, preflight, sweep
from repeatability.records import adapter_files, artifacts, curve_files, integrity
from repeatability.records.errors import RunDirError
from repeatability.trial import pipeline

CELL = "smollm2-135m__quotes__paged_adamw_8bit"


def _flip_a_byte(file: Path, offset: int = -1) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


def test_manifest_lists_every_file_but_the_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path, "s", SMOL_8, 1)
    manifest = json.loads((run / "MANIFEST.json").read_text())
    assert manifest["algorithm"] == "sha256"
    assert sorted(manifest["files"]) == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                                         "config.yaml", "environment.json", "generations.jsonl",
                                         "loss_curve.csv", "overrides.yaml"]
    assert manifest["files"]["adapter/adapter_model.safetensors"] == adapter_files.adapter_sha256(run)
    assert manifest["files"]["loss_curve.csv"] == integrity.file_sha256(run / "loss_curve.csv")
    assert (run / "DONE").read_text() == "complete\n" and integrity.verify_manifest(run) is True


def test_a_flipped_byte_in_the_adapter_is_named(tmp_path: Path) -> None:
    run = write_run(tmp_path, "s", SMOL_8, 1)
    _flip_a_byte(run / "adapter" / "adapter_model.safetensors")
    with pytest.raises(RunDirError) as exc:
        integrity.verify_manifest(run)
    message = str(exc.value)
    assert "\n" not in message
    assert message == (f"corrupted finished run: {run}/adapter/adapter_model.safetensors does not match its "
                       f"SHA-256 in MANIFEST.json; restore it, or delete {run} and re-run its trial")
    (run / "loss_curve.csv").unlink()
    with pytest.raises(RunDirError, match=r"safetensors does not match .*; .*/loss_curve.csv is missing; restore"):
        integrity.verify_manifest(run)


def test_a_run_without_manifest_still_verifies_as_such(tmp_path: Path) -> None:
    run = write_run(tmp_path, "s", SMOL_8, 1)
    (run / "MANIFEST.json").unlink()  # as written before manifests existed
    assert integrity.verify_manifest(run) is False
    study = load_study(tmp_path / "s")
    assert study.problems == [] and list(study.runs["integrity"]) == ["no manifest"]
    assert list(study.runs["status"]) == ["complete"]


def test_a_published_record_without_adapter_weights_is_not_kept_not_corrupted(tmp_path: Path) -> None:
    """A study committed without its adapter weights (.gitignore) still verifies: the weights
    are "not kept"; any other missing or changed file is still corruption."""
    run = write_run(tmp_path, "s", SMOL_8, 1)
    (run / artifacts.WEIGHTS_FILE).unlink()
    assert integrity.verify_manifest(run) is True and not adapter_files.weights_kept(run)
    study = load_study(tmp_path / "s")
    assert study.problems == [] and list(study.runs["integrity"]) == ["verified; adapter weights not kept"]
    assert list(study.runs["status"]) == ["complete"]
    (run / "loss_curve.csv").unlink()
    with pytest.raises(RunDirError, match="loss_curve.csv is missing"):
        integrity.verify_manifest(run)


def test_a_finished_record_is_never_rewritten(tmp_path: Path) -> None:
    run = write_run(tmp_path, "s", SMOL_8, 1)
    before = (run / "summary.json").read_text()
    with pytest.raises(RunDirError, match="holds a finished run; refusing to write summary.json"):
        artifacts.write_summary(run, {"status": "failed"})
    with pytest.raises(RunDirError, match="refusing to write error.txt"):
        artifacts.write_error(run, "Traceback ...")
    assert (run / "summary.json").read_text() == before and not (run / "error.txt").exists()


def test_the_loader_lists_a_corrupted_adapter_and_leaves_out_its_numbers(tmp_path: Path) -> None:
    for trial, ppl in ((1, 10.0), (2, 20.0), (3, 1000.0)):
        write_run(tmp_path, "s", SMOL_8, trial, ppl=ppl)
    bad = artifacts.run_dir(tmp_path, "s", SMOL_8, 3)
    _flip_a_byte(bad / "adapter" / "adapter_model.safetensors", offset=200)
    study = load_study(tmp_path / "s")
    assert [(p.run, p.kind) for p in study.problems] == [(f"{CELL}/trial-03", "integrity")]
    assert "trial-03/adapter/adapter_model.safetensors does not match its SHA-256" in study.problems[0].message
    runs = study.runs.set_index("trial")
    assert list(runs["status"]) == ["complete", "complete", "corrupted"]
    assert list(runs["integrity"]) == ["verified", "verified", "corrupted"]
    stats = cell_stats(study.runs).set_index("cell").loc[CELL]
    assert (stats["n_complete"], stats["n_corrupted"], stats["n"]) == (2, 1, 2)
    assert stats["mean"] == 15.0 and stats["max"] == 20.0  # the corrupted run's 1000 is not used
    assert set(study.curves[study.curves["trial"] == 3]["status"]) == {"corrupted"}


def test_the_loader_flags_a_changed_curve_too(tmp_path: Path) -> None:
    run = write_run(tmp_path, "s", SMOL_8, 1)
    artifacts.write_text(run / "loss_curve.csv", (run / "loss_curve.csv").read_text().replace("2.9", "1.9", 1))
    study = load_study(tmp_path / "s")
    assert [p.kind for p in study.problems] == ["integrity"] and "loss_curve.csv" in study.problems[0].message
    assert list(study.runs["status"]) == ["corrupted"]


# --------------------------------------------------------------------------- the sweep (run_one)


@pytest.fixture
def job(tmp_path: Path) -> DictConfig:
    [cfg] = preflight.compose_jobs([f"results_dir={tmp_path}", "study=s", "trial=1"], multirun=False)
    return cfg


def _fake_execute(cfg: Any, config_yaml: str, overrides: list[str], path: Path, resume_from: Any = None,
                  guard: Any = None, thread_budget: Any = None) -> dict[str, Any]:
    """What pipeline.execute leaves behind, minus the training."""
    artifacts.write_config(path, config_yaml, overrides)
    artifacts.write_environment(path, {"python": "3"})
    curve_files.write_loss_curve(path, [{"step": 1, "split": "train", "loss": 2.0}])
    artifacts.write_generations(path, [])
    sha = write_adapter(path, cfg.trial)
    guard()
    summary = {"study": cfg.study, "trial": cfg.trial, "status": "complete", "adapter": {"sha256": sha},
               "metrics": {}, "optimizer": {"effective": {"bits": 8, "state_8bit_param_fraction": 1.0,
                                                          "paging_effective": False}}, "timings": {"total_s": 0}}
    artifacts.write_summary(path, summary)
    integrity.mark_done(path)
    return summary


def test_sweep_claims_runs_and_releases_the_claim(job: DictConfig, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "execute", _fake_execute)
    run = tmp_path / "s" / CELL / "trial-01"
    assert sweep.run_one(job) == "complete"
    assert not artifacts.claim_file(run).exists()
    assert (run / "DONE").read_text().strip() == artifacts.read_summary(run)["status"] == "complete"
    assert integrity.verify_manifest(run) is True
    assert sweep.run_one(job) == "skipped"


def test_sweep_skips_a_run_claimed_by_a_live_launcher(job: DictConfig, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pipeline, "execute", lambda *a, **k: pytest.fail("a claimed run must not execute"))
    run = tmp_path / "s" / CELL / "trial-01"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("half-written by the live launcher")
    holder = claims.acquire(run, 600, 30).holder  # this process: alive
    with caplog.at_level("INFO", logger="repeatability"):
        assert sweep.run_one(job) == "running_elsewhere"
    assert f"{run} running elsewhere: {holder.where}" in caplog.text
    assert (run / "config.yaml").read_text() == "half-written by the live launcher"  # not redone
    assert claims.read_claim(run) == holder


def test_sweep_takes_over_a_stale_claim_and_says_so(job: DictConfig, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pipeline, "execute", _fake_execute)
    run = tmp_path / "s" / CELL / "trial-01"
    run.mkdir(parents=True)
    (run / "stale.txt").write_text("left by a killed launcher")
    artifacts.write_json(artifacts.claim_file(run), {
        "host": "node-17", "pid": 4242, "pid_started": None, "process_space": "x", "token": "old",
        "started_at": "2026-01-01T00:00:00+00:00", "heartbeat": "2026-01-01T00:00:00+00:00"})
    with caplog.at_level("INFO", logger="repeatability"):
        assert sweep.run_one(job) == "complete"
    assert f"{run}: took over a stale claim of node-17/4242 (since 2026-01-01T00:00:00+00:00: last heartbeat" \
        in caplog.text
    assert not (run / "stale.txt").exists() and artifacts.run_state(run) == "complete"
    assert not artifacts.claim_file(run).exists()


def test_a_launcher_that_lost_its_claim_records_nothing(job: DictConfig, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "s" / CELL / "trial-01"
    thief = {"host": "node-17", "pid": 7, "pid_started": None, "process_space": "x", "token": "thief",
             "started_at": "2026-01-01T00:00:00+00:00", "heartbeat": "2999-01-01T00:00:00+00:00"}

    def taken_over_then_crash(cfg: Any, config_yaml: str, overrides: list[str], path: Path, guard: Any,
                               resume_from: Any = None, thread_budget: Any = None) -> None:
        artifacts.write_config(path, config_yaml, overrides)
        artifacts.write_json(artifacts.claim_file(path), thief)  # judged stale and taken over meanwhile
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "execute", taken_over_then_crash)
    assert sweep.run_one(job) == "claim_lost"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "overrides.yaml"]  # no error.txt, no summary
    assert artifacts.read_json(artifacts.claim_file(run)) == thief  # the new holder's claim is left alone

    def taken_over_then_finish(cfg: Any, config_yaml: str, overrides: list[str], path: Path, guard: Any,
                               resume_from: Any = None, thread_budget: Any = None) -> None:
        artifacts.claim_file(path).unlink()
        claims.acquire(path, 600, 30)  # reclaimed by "another launcher" (this process: live)
        return _fake_execute(cfg, config_yaml, overrides, path, guard=guard)

    artifacts.claim_file(run).unlink()
    monkeypatch.setattr(pipeline, "execute", taken_over_then_finish)
    assert sweep.run_one(job) == "claim_lost"  # the guard stopped it before its results were written
    assert not (run / "summary.json").exists() and not (run / "DONE").exists()


def test_a_rerun_over_a_corrupted_finished_run_refuses_naming_the_file(
        job: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pipeline, "execute", _fake_execute)
    run = tmp_path / "s" / CELL / "trial-01"
    assert sweep.run_one(job) == "complete"
    weights = run / "adapter" / "adapter_model.safetensors"
    _flip_a_byte(weights)
    corrupted = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.setattr(pipeline, "execute", lambda *a, **k: pytest.fail("a corrupted run must not be redone"))
    with caplog.at_level("INFO", logger="repeatability"):
        assert sweep.run_one(job) == "invalid"
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"error: corrupted finished run: {weights} does not match its SHA-256 in MANIFEST.json")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == corrupted  # nothing overwritten
    assert not artifacts.claim_file(run).exists()


def test_claim_settings_are_checked_and_do_not_change_a_runs_config(tmp_path: Path) -> None:
    from repeatability.config.errors import ConfigError
    from repeatability.config.run import to_run_config

    [cfg] = preflight.compose_jobs(["claim_heartbeat_s=60", "claim_stale_after_s=100"], multirun=False)
    with pytest.raises(ConfigError, match="at least 3 heartbeats"):
        to_run_config(cfg)
    [a] = preflight.compose_jobs([], multirun=False)
    [b] = preflight.compose_jobs(["claim_stale_after_s=3600"], multirun=False)
    assert (a.claim_heartbeat_s, a.claim_stale_after_s) == (30, 600)
    assert sweep._config_fingerprint(a) == sweep._config_fingerprint(b)
    assert OmegaConf.select(b, "claim_stale_after_s") == 3600
