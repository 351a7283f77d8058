"""``python -m repeatability.rescore``: every finished adapter of a study scored on one loaded
base reproduces its run's own perplexity; overrides change what is scored; bad input is one
line, exit 2, and no file is rewritten; the report shows an evaluation by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from repeatability import rescore
from repeatability.records import artifacts, eval_records, integrity
from repeatability.trial import modelling
from tests.conftest import run_cli, tiny_overrides


@pytest.fixture(scope="module")
def study(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished trials of the tiny model (read-only: tests that write copy it first)."""
    results = tmp_path_factory.mktemp("rescore")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, results, study="rs", **{"train.eval_every": 0})
    assert run_cli(["-m", "trial=1,2", *args]) == 0
    return results / "rs"


@pytest.fixture
def copy(study: Path, tmp_path: Path) -> Path:
    target = tmp_path / "rs"
    shutil.copytree(study, target)
    return target


def _runs(study: Path) -> list[Path]:
    return list(artifacts.iter_run_dirs(study))


def _snapshot(study: Path) -> dict[str, bytes]:
    return {str(p.relative_to(study)): p.read_bytes() for p in study.rglob("*") if p.is_file()}


def test_rescore_reproduces_every_runs_perplexity_on_one_loaded_base(copy: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real_load = modelling.load_base
    monkeypatch.setattr(modelling, "load_base", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    summaries = {run: (run / "summary.json").read_bytes() for run in _runs(copy)}
    assert rescore.main([str(copy)]) == 0
    assert len(loads) == 1  # one base load for both runs
    for run, summary_bytes in summaries.items():
        assert (run / "summary.json").read_bytes() == summary_bytes  # the summary is never rewritten
        assert eval_records.list_evals(run) == ["heldout"]
        record = eval_records.read_eval(run, "heldout")
        summary = json.loads(summary_bytes)
        for key in ("perplexity_token_weighted", "perplexity_mean_per_sequence", "base_perplexity_token_weighted"):
            assert record["metrics"][key] == pytest.approx(summary["metrics"][key], rel=1e-6), key
        assert record["metrics"]["heldout_tokens"] == summary["metrics"]["heldout_tokens"]
        assert record["data"]["heldout_sha256"] == summary["data"]["heldout_sha256"]
        assert record["adapter"] == {"sha256": summary["adapter"]["sha256"], "matches_summary": True}
        assert record["base"]["runs_on_this_load"] == 2
        assert record["overrides"] == [] and record["eval"]["batching"] == "padded"
    assert integrity.verify_manifest(run)  # the evaluation does not break the run's integrity


def test_an_override_is_scored_under_its_own_name(copy: Path) -> None:
    assert rescore.main([str(copy), "eval.batching=padding_free", "eval.batch_size=3", "--name", "packed"]) == 0
    for run in _runs(copy):
        record = eval_records.read_eval(run, "packed")
        assert (record["eval"]["batching"], record["eval"]["batch_size"]) == ("padding_free", 3)
        assert record["overrides"] == ["eval.batching=padding_free", "eval.batch_size=3"]
        summary = artifacts.read_summary(run)
        assert record["metrics"]["perplexity_token_weighted"] == pytest.approx(
            summary["metrics"]["perplexity_token_weighted"], rel=1e-5)
    assert rescore.main([str(copy), "eval.max_examples=5", "--name", "five"]) == 0
    assert eval_records.read_eval(_runs(copy)[0], "five")["metrics"]["heldout_sequences"] == 5
    assert rescore.main([str(copy), "eval=full", "--name", "full"]) == 0  # a config group choice
    full = eval_records.read_eval(_runs(copy)[0], "full")
    assert full["metrics"]["heldout_sequences"] == artifacts.read_summary(_runs(copy)[0])["data"]["n_heldout"] == 24


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()  # what earlier (good) calls printed
    assert rescore.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_line_and_rewrites_nothing(copy: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    (empty / "tiny__tq__paged_adamw_8bit" / "trial-01").mkdir(parents=True)  # half-finished only
    assert "no finished runs" in _bad([str(empty)], capsys)
    assert "--name" in _bad([str(copy), "eval.batching=padding_free"], capsys)
    assert "not key=value" in _bad([str(copy), "eval.no_such_key=1", "--name", "x"], capsys)

    assert rescore.main([str(copy)]) == 0
    before = _snapshot(copy)
    assert "exists" in _bad([str(copy)], capsys)  # the name is taken: nothing rewritten
    assert _snapshot(copy) == before
    assert rescore.main([str(copy), "--force"]) == 0  # --force replaces it

    broken = _runs(copy)[1]
    config = (broken / "config.yaml").read_text()
    model_path = artifacts.read_summary(broken)["model"]["resolved"]
    (broken / "config.yaml").write_text(config.replace(model_path, str(tmp_path / "gone")))
    assert "corrupted finished run" in _bad([str(copy), "--force"], capsys)  # config.yaml no longer matches
    manifest = json.loads((broken / "MANIFEST.json").read_text())  # as if the base folder had moved
    manifest["files"]["config.yaml"] = integrity.file_sha256(broken / "config.yaml")
    (broken / "MANIFEST.json").write_text(json.dumps(manifest))
    before = _snapshot(copy)
    line = _bad([str(copy), "--force"], capsys)
    assert "base model cannot be resolved" in line and "trial-02" in line
    assert _snapshot(copy) == before  # checked before the first run was scored


def test_the_report_shows_an_evaluation_by_name(copy: Path) -> None:
    from analysis.load import load_study
    from analysis.report import main as report_main

    assert rescore.main([str(copy), "eval.max_examples=5", "--name", "five"]) == 0
    study = load_study(copy, eval_name="five")
    for _, row in study.runs.iterrows():
        record = eval_records.read_eval(copy / row["run"], "five")
        assert row["metrics.perplexity_token_weighted"] == record["metrics"]["perplexity_token_weighted"]
        assert row["metrics.heldout_sequences"] == 5 and row["evaluation"] == "five"
    assert report_main([str(copy), "--eval", "five"]) == 0
    assert "evaluation `five`" in (copy / "_report" / "report.md").read_text()
    missing = load_study(copy, eval_name="nope")
    assert set(missing.runs["status"]) == {"no evaluation"}
    assert {p.kind for p in missing.problems} == {"evaluation"}
