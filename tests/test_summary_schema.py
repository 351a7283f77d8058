"""The summary schema (repeatability/records/summary.py) is what the docs list, the writer accepts and
the reader loads; schema-1 summaries still load."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from analysis.load import load_study
from repeatability.records import artifacts
from repeatability.records import run_setup as R
from repeatability.records import summary as S
from repeatability.records.errors import RunDirError
from tests.analysis_fixtures import SMOL_8, base_summary, write_default_like_study, write_run

DOCS = Path(__file__).resolve().parent.parent / "docs" / "run-directory.md"


def test_docs_list_exactly_the_schema_fields() -> None:
    text = DOCS.read_text()
    block = re.search(r"<!-- summary-fields:begin -->\n(.*?)\n<!-- summary-fields:end -->", text, re.DOTALL)
    assert block is not None, "docs/run-directory.md lost its summary-fields markers"
    assert block.group(1) == S.markdown_table(), "regenerate it: python -m repeatability.records.summary"
    keys = re.findall(r"^\| `([^`]+)` \|", block.group(1), re.MULTILINE)
    assert "optimizer.effective.class" in keys and "tracking.run_id" in keys and "checkpointing.saved[].bytes" in keys
    assert len(keys) == len(set(keys))


def test_columns_are_checked_where_they_are_written() -> None:
    assert S.COLUMNS.metrics.perplexity_token_weighted == "metrics.perplexity_token_weighted"
    assert S.COLUMNS.optimizer.effective.class_ == "optimizer.effective.class"
    source = "lora_init"  # a field chosen at run time
    assert getattr(S.COLUMNS.seeds, source) == "seeds.lora_init"
    with pytest.raises(AttributeError, match="Metrics has no field 'perplexity'"):
        S.COLUMNS.metrics.perplexity  # noqa: B018


def test_writer_refuses_keys_and_types_the_schema_does_not_declare(tmp_path: Path) -> None:
    record = base_summary(SMOL_8, 1, "s", 10.0)
    with pytest.raises(RunDirError, match=r"summary key metrics\.perplexity is not in the summary schema"):
        artifacts.write_summary(tmp_path, {**record, "metrics": {**record["metrics"], "perplexity": 3.0}})
    with pytest.raises(RunDirError, match=r"summary key trial: '1' is not a int"):
        artifacts.write_summary(tmp_path, {**record, "trial": "1"})
    drifted = {**record["optimizer"]["effective"], "state_dtypes": {"torch.uint8": 840}}
    with pytest.raises(RunDirError, match="state_dtypes keys are dtype names without 'torch.'"):
        artifacts.write_summary(tmp_path, {**record, "optimizer": {**record["optimizer"], "effective": drifted}})
    assert not (tmp_path / artifacts.SUMMARY).exists()
    artifacts.write_summary(tmp_path, record)
    assert artifacts.read_summary(tmp_path) == {**record, "schema_version": S.SCHEMA_VERSION}
    assert S.required_missing(artifacts.read_summary_record(tmp_path)) == []


def test_an_undeclared_key_on_disk_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    run = write_run(tmp_path, "s", SMOL_8, 1)
    write_run(tmp_path, "s", SMOL_8, 2)
    artifacts.write_json(run / artifacts.SUMMARY, {**artifacts.read_json(run / artifacts.SUMMARY), "extra": 1})
    study = load_study(tmp_path / "s")
    assert [(p.run, p.kind) for p in study.problems] == [(f"{SMOL_8.dirname}/trial-01", "summary")]
    assert "summary key extra is not in the summary schema" in study.problems[0].message
    assert list(study.runs["status"]) == ["unreadable", "complete"]


def test_schema1_summaries_load_with_their_numbers(tmp_path: Path) -> None:
    old = load_study(write_default_like_study(tmp_path, "old", schema1=True)).runs
    new = load_study(write_default_like_study(tmp_path, "new")).runs
    first = artifacts.read_json(tmp_path / "old" / SMOL_8.dirname / "trial-01" / artifacts.SUMMARY)
    assert first["schema_version"] == 1 and "tracking" not in first and "precision" not in first
    assert list(old["status"]) == ["complete"] * 14
    col = S.COLUMNS.metrics.perplexity_token_weighted
    assert list(old[col]) == list(new[col]) and len(set(old[col])) == 14
    assert list(old[S.COLUMNS.seeds.lora_init]) == list(new[S.COLUMNS.seeds.lora_init])
    assert S.COLUMNS.precision.mixed_precision not in old.columns
    assert S.COLUMNS.precision.mixed_precision in new.columns


def test_config_groups_and_their_summary_groups_name_the_same_fields() -> None:
    """The summary copies `asdict(cfg.quant)` after training: a config field without its schema
    field (or the reverse) would crash a finished run. Caught here. (`asdict(cfg.optim)` too: its
    record, run_setup.OptimRequested, is derived from OptimConfig; tests/test_declarations.py.)"""
    from dataclasses import fields

    from repeatability.config.cell import QuantConfig

    def names(cls: type) -> set[str]:
        return {f.name for f in fields(cls)}

    assert names(R.Quantization) == names(QuantConfig) - {"compute_dtype"}, \
        "mirror the quant config in run_setup.Quantization (compute_dtype is recorded under device)"


def test_every_declared_metric_is_a_schema_field_and_each_use_reads_the_registry() -> None:
    """One declaration per metric (repeatability.records.metrics): its key is in the summary schema, and
    the analyses' lists are derived from it, not kept beside it."""
    from analysis import load
    from analysis.compute import anova, curves, results, variance
    from repeatability.records import metrics, tracking

    documented = set(re.findall(r"^\| `([^`]+)` \|", S.markdown_table(), re.MULTILINE))
    assert {m.key for m in metrics.METRICS} <= documented
    assert metrics.PRIMARY.key == "metrics.perplexity_token_weighted"
    assert results.PERPLEXITY_METRICS == metrics.keys("perplexity") and curves.LOSS_METRICS == metrics.keys("loss")
    assert variance.OFAT_METRICS[:2] == (("log perplexity", metrics.PRIMARY.key, True),
                                         ("perplexity", metrics.PRIMARY.key, False))
    assert anova.RESPONSES == metrics.responses("anova") and anova.RESPONSES[0][0] == "log perplexity"
    assert load.EVAL_METRICS == metrics.names("eval") and tracking.FINAL_METRICS == metrics.names("tracker")
    assert metrics.label("metrics.final_val_loss") == "final validation loss (nats/token)"
    assert metrics.label("not.declared") == "not.declared"


def test_headline_reads_the_typed_record() -> None:
    """repeatability.records.record.headline words a typed Summary; the fixture run's numbers appear."""
    from repeatability.records.record import headline

    record = S.parse(base_summary(SMOL_8, 3, "s", 31.25))
    text = headline(record)
    assert text.startswith(f"Trial 3 of {SMOL_8.model} x {SMOL_8.dataset} x {SMOL_8.optim}: complete after ")
    assert "Held-out perplexity 31.25 (token-weighted;" in text and "32-bit Adam state" not in text


def test_task_scores_are_the_registry_task_metrics_declared_once():
    """A baseline's scores (tasks.zero_shot/few_shot) are Metrics' task fields, derived, not re-declared."""
    from repeatability.records import metrics

    assert metrics.names("task") == S.TASK_SCORES
    metric_fields = {f.name: f for f in dataclasses.fields(S.Metrics)}
    for f in dataclasses.fields(S.TaskScores):
        assert f.metadata["doc"] == metric_fields[f.name].metadata["doc"]
    assert S.parse({"tasks": {"zero_shot": {"accuracy": 0.25}}}).tasks.zero_shot.accuracy == 0.25
