"""tracking=tensorboard|mlflow: the trackers' own readers see exactly what the run wrote.

Each tracker run of the tiny model is read back with the tracker's library (TensorBoard's
``EventAccumulator`` on the event files, ``MlflowClient`` on the file store) and compared with
the run's ``loss_curve.csv`` and ``summary.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from repeatability.records import artifacts, curve_files, tracking
from tests.conftest import run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"
FLOAT32 = {"rel_tol": 1e-6, "abs_tol": 1e-9}  # TensorBoard stores scalars as float32


@pytest.fixture(scope="module")
def tracked(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trial 1 of the 8-bit arm once with TensorBoard (study tb), once with MLflow (study ml)."""
    results = tmp_path_factory.mktemp("tracked")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, results)
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=tb", "tracking=tensorboard", *args]) == 0
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=ml", "tracking=mlflow", *args]) == 0
    return results


def _curve(run: Path, split: str) -> list[dict]:
    return [r for r in curve_files.read_loss_curve(run) if r["split"] == split]


def _assert_series(logged: list[tuple[int, float]], rows: list[dict], key: str, **tol: float) -> None:
    assert [step for step, _ in logged] == [r["step"] for r in rows]
    for (_, value), row in zip(logged, rows):
        assert math.isclose(value, row[key], **tol), (key, value, row[key])


def test_tensorboard_event_files_hold_the_loss_curve_and_perplexities(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tracked / "tb" / CELL / "trial-01"
    summary = artifacts.read_summary(run)
    assert summary["tracking"] == {"name": "tensorboard", "dir": "tensorboard", "run_name": f"{CELL}/trial-01"}
    assert any(p.name.startswith("events.out.tfevents.") for p in (run / "tensorboard").iterdir())
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    train, val = _curve(run, "train"), _curve(run, "val")
    assert len(train) == 4 and len(val) == 2
    _assert_series(scalars["train/loss"], train, "loss", **FLOAT32)
    _assert_series(scalars["train/learning_rate"], train, "learning_rate", **FLOAT32)
    _assert_series(scalars["train/grad_norm"], train, "grad_norm", **FLOAT32)
    _assert_series(scalars["eval/loss"], val, "loss", **FLOAT32)
    for key in ("perplexity_token_weighted", "perplexity_mean_per_sequence", "base_perplexity_token_weighted"):
        [(step, value)] = scalars[f"heldout/{key}"]
        assert step == 4 and math.isclose(value, summary["metrics"][key], **FLOAT32)
    texts = {tag: acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert '"paged_adamw_8bit"' in texts["config/text_summary"]
    assert f'"lora_init": {summary["seeds"]["lora_init"]}' in texts["seeds/text_summary"]
    assert '"bits": 8' in texts["optimizer/effective/text_summary"]
    # the event files are part of the finished run: its manifest covers them
    manifest = artifacts.read_json(run / artifacts.MANIFEST)["files"]
    assert {p for p in manifest if p.startswith("tensorboard/")} == {
        f"tensorboard/{p.name}" for p in (run / "tensorboard").iterdir()}


def test_mlflow_file_store_holds_the_run_grouped_by_study_cell_trial(tracked: Path) -> None:
    from mlflow.tracking import MlflowClient

    run = tracked / "ml" / CELL / "trial-01"
    summary = artifacts.read_summary(run)
    store = (tracked / "ml" / artifacts.MLFLOW_STORE).resolve().as_uri()
    record = summary["tracking"]
    assert record["name"] == "mlflow" and record["uri"] == store and record["experiment"] == "ml"
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ml")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == record["run_id"] and found.info.status == "FINISHED"
    assert found.info.run_name == f"{CELL}/trial-01"
    assert {k: found.data.tags[k] for k in ("study", "cell", "trial", "optim", "status")} == {
        "study": "ml", "cell": CELL, "trial": "1", "optim": "paged_adamw_8bit", "status": "complete"}

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))

    train, val = _curve(run, "train"), _curve(run, "val")
    _assert_series(history("loss"), train, "loss", rel_tol=1e-12)
    _assert_series(history("learning_rate"), train, "learning_rate", rel_tol=1e-12)
    _assert_series(history("grad_norm"), train, "grad_norm", rel_tol=1e-12)
    _assert_series(history("eval_loss"), val, "loss", rel_tol=1e-12)
    metrics = found.data.metrics
    for key in ("perplexity_token_weighted", "perplexity_mean_per_sequence", "final_val_loss"):
        assert metrics[f"heldout/{key}"] == summary["metrics"][key]
    params = found.data.params
    for source in ("lora_init", "data_order", "dropout", "generation"):
        assert params[f"seeds.{source}"] == str(summary["seeds"][source])
    assert params["config.optim.name"] == "paged_adamw_8bit" and params["config.train.max_steps"] == "4"
    assert params["config.study"] == "ml" and params["max_steps"] == "4"  # the latter: the Trainer's own
    assert params["optimizer.effective.bits"] == "8"
    assert params["optimizer.effective.class"] == summary["optimizer"]["effective"]["class"]


def test_tracking_does_not_count_as_another_config(tracked: Path, tiny_model_dir: Path, quotes_jsonl: Path) -> None:
    """A finished run re-run without its tracker is skipped, not refused as another config."""
    run = tracked / "tb" / CELL / "trial-01"
    before = artifacts.read_json(run / artifacts.MANIFEST)
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tracked)
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=tb", "tracking=none", *args]) == 0
    assert artifacts.read_json(run / artifacts.MANIFEST) == before


def test_missing_tracker_package_is_one_line_before_training(
        tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(tracking.PACKAGES, "mlflow", ("not_an_installed_module_xyz", "mlflow"))
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    assert run_cli(["trial=1", "study=s", "tracking=mlflow", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [("error: tracking=mlflow needs the not_an_installed_module_xyz package, which is not installed; "
                    "install this project's extra: .venv/bin/pip install -e '.[mlflow]' (or tracking=none)")]
    assert not (tmp_path / "s").exists()


def test_tracking_uri_is_for_mlflow_only(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    assert run_cli(["study=s", "tracking=tensorboard", "tracking.tracking_uri=http://x", *args]) == 2
    assert "tracking.tracking_uri is read by tracking=mlflow only" in capsys.readouterr().err


def test_wandb_offline_run_is_written_under_the_study(tiny_model_dir: Path, quotes_jsonl: Path,
                                                      tmp_path: Path) -> None:
    """W&B offline: its own run files under ``_wandb/`` (wandb >= 0.19 has no Python reader of
    them, so only their presence and the summary's record of them are checked here)."""
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=wb", "tracking=wandb", "tracking.mode=offline",
                    *args]) == 0
    record = artifacts.read_summary(tmp_path / "wb" / CELL / "trial-01")["tracking"]
    assert {k: record[k] for k in ("name", "mode", "project", "run_name")} == {
        "name": "wandb", "mode": "offline", "project": "wb", "run_name": f"{CELL}/trial-01"}
    folder = tmp_path / "wb" / record["dir"]
    assert folder.parent == tmp_path / "wb" / artifacts.WANDB_DIR / "wandb"
    assert (folder / f"run-{record['run_id']}.wandb").stat().st_size > 0
