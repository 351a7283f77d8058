"""Each bad input gets one line naming the problem and the fix, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from repeatability.records import artifacts
from tests.conftest import run_cli, tiny_overrides


def _error_line(capsys: pytest.CaptureFixture, args: list[str], results: Path) -> str:
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not results.exists() or not any(results.rglob("summary.json")), "nothing may run"
    return err[0]


@pytest.mark.parametrize("group,value,listed", [
    ("model", "llama3-70b", "smollm2-135m"),
    ("dataset", "wikitext", "quotes"),
    ("optim", "paged_adamw_4bit", "paged_adamw_8bit"),
])
def test_unknown_choice(group: str, value: str, listed: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["-m", f"{group}={value}", "trial=1,2", f"results_dir={tmp_path}"], tmp_path)
    assert f"unknown {group} '{value}'" in line and listed in line


def test_unknown_value_inside_a_sweep(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["-m", "optim=paged_adamw_8bit,paged_adamw_16bit", f"results_dir={tmp_path}"], tmp_path)
    assert "unknown optim 'paged_adamw_16bit'" in line


def test_wrong_type_fails_at_compose(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["train.lr=fast", f"results_dir={tmp_path}"], tmp_path)
    assert "train.lr" in line or "'fast'" in line


def test_misspelled_key(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["train.learning_rate=1e-4", f"results_dir={tmp_path}"], tmp_path)
    assert "learning_rate" in line


def test_trial_below_one(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["-m", "trial=0,1", f"results_dir={tmp_path}"], tmp_path)
    assert "trial=0" in line and "from 1" in line


def test_missing_local_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["dataset=local", f"dataset.path={tmp_path}/nope.jsonl", f"results_dir={tmp_path}/r"],
                       tmp_path / "r")
    assert "nope.jsonl does not exist" in line and "dataset.path" in line


def test_missing_local_model(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["model=local", f"model.path={tmp_path}/ckpt", f"results_dir={tmp_path}/r"],
                       tmp_path / "r")
    assert "has no config.json" in line and "model.path" in line


def test_hub_dataset_unreachable_offline(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["dataset=english_quotes", f"results_dir={tmp_path}"], tmp_path)
    assert "Abirate/english_quotes" in line and "local copy" in line


def test_hub_model_unreachable_offline(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = _error_line(capsys, ["model=llama2-7b", f"results_dir={tmp_path}"], tmp_path)
    assert "meta-llama/Llama-2-7b-hf" in line and "model.path" in line


def test_empty_split(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    data = tmp_path / "two.jsonl"
    data.write_text('{"text": "one"}\n{"text": "two"}\n')
    line = _error_line(capsys, ["dataset=local", f"dataset.path={data}", f"results_dir={tmp_path}/r"], tmp_path / "r")
    assert "empty held-out split" in line


@pytest.mark.parametrize("name,content,where", [
    ("broken.jsonl", '{"text": "one two three"}\n{broken\n{"text": "four five six"}\n',
     "line 2 is not valid JSON (Expecting property name enclosed in double quotes, column 2)"),
    ("broken.json", '[{"text": "one two three"},\n {"text": "four" "five"}]\n',
     "line 2 is not valid JSON (Expecting ',' delimiter, column 18)"),
    ("broken.csv", 'text\none two three\nfour, five, six\n',
     "line 3 has 3 fields where the header has 1 (quote a field that holds a comma: \"a, b\")"),
])
def test_malformed_local_file(name: str, content: str, where: str, capsys: pytest.CaptureFixture,
                              tmp_path: Path) -> None:
    """The file, the line and the parser's message, not "make the hub reachable"."""
    data = tmp_path / name
    data.write_text(content)
    assert run_cli(["dataset=local", f"dataset.path={data}", f"results_dir={tmp_path}/r"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [(f"error: dataset local: {data} {where}; "
                                         "fix or remove that line in dataset.path")]
    assert out == "" and not (tmp_path / "r").exists()  # no datasets log line, no traceback, nothing ran


def test_bf16_on_cpu_without_bf16(capsys: pytest.CaptureFixture, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from repeatability.trial import modelling

    monkeypatch.setattr(modelling, "cpu_has_bf16", lambda: False)  # CI's CPUs vary; this one may have bf16
    line = _error_line(capsys, ["quant.compute_dtype=bfloat16", "device=cpu", f"results_dir={tmp_path}"], tmp_path)
    assert "bf16" in line and "quant.compute_dtype=auto" in line


@pytest.mark.parametrize("args,expected", [
    (["optim.state_maps=bnb_0.40"], ["optim.state_maps='bnb_0.40'", "current, bnb_0.41.0"]),
    (["optim=paged_adamw_32bit", "optim.state_maps=bnb_0.41.0"], ["8-bit bitsandbytes optimizer", "paged_adamw_32bit"]),
    (["optim=adamw_torch", "optim.state_maps=bnb_0.41.0"], ["8-bit bitsandbytes optimizer", "adamw_torch"]),
    (["quant.mixed_precision=fp16", "quant.compute_dtype=float32"], ["quant.compute_dtype=float16"]),
])
def test_state_maps_and_precision_mistakes(args: list[str], expected: list[str], capsys: pytest.CaptureFixture,
                                           tmp_path: Path) -> None:
    line = _error_line(capsys, ["-m", "trial=1,2", *args, f"results_dir={tmp_path}"], tmp_path)
    assert all(e in line for e in expected), line


def test_corrupted_run_directory_is_reported_and_kept(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "c" / "tiny__tq__paged_adamw_8bit" / "trial-01"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{not json")
    (run / "DONE").write_text("complete\n")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    assert run_cli(["-m", "study=c", "trial=1,2", *args]) == 1
    out = capsys.readouterr().out
    assert "corrupted JSON" in out and "re-run" in out
    assert (run / "summary.json").read_text() == "{not json"  # nothing lost or overwritten
    assert artifacts.run_state(run.parent / "trial-02") == "complete"  # the sweep went on
    with pytest.raises(artifacts.RunDirError, match="corrupted JSON"):
        artifacts.read_summary(run)


def test_unknown_schema_version(tmp_path: Path) -> None:
    artifacts.write_json(tmp_path / "summary.json", {"schema_version": 99, "status": "complete"})
    with pytest.raises(artifacts.RunDirError, match="schema version 99 is not supported"):
        artifacts.read_summary(tmp_path)
