"""Loading a study through the contract: nothing dropped, problems listed, frames tidy."""

from __future__ import annotations

import math

import pytest
from analysis_fixtures import SMOL_8, SMOL_32, SMOL_FIXED, write_mixed_study, write_run

from analysis.load import StudyError, flatten, load_study
from repeatability.records import adapter_files, artifacts


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return load_study(write_mixed_study(tmp_path_factory.mktemp("results")))


def test_every_run_is_a_row_with_its_status(mixed):
    runs = mixed.runs.set_index("run")
    assert len(runs) == 14
    status = runs["status"].to_dict()
    assert status[f"{SMOL_8.dirname}/trial-04"] == "diverged"
    assert status[f"{SMOL_8.dirname}/trial-05"] == "unreadable"  # corrupted summary
    assert status[f"{SMOL_32.dirname}/trial-04"] == "failed"
    assert status[f"{SMOL_32.dirname}/trial-05"] == "incomplete"
    assert status[f"{SMOL_32.dirname}/trial-06"] == "unreadable"  # schema version 99
    assert sorted(runs["status"].value_counts().items()) == [
        ("complete", 9), ("diverged", 1), ("failed", 1), ("incomplete", 1), ("unreadable", 2)]


def test_problems_name_the_run_and_the_reason(mixed):
    by_run = {p.run: p for p in mixed.problems}
    assert len(mixed.problems) == 2
    corrupted = by_run[f"{SMOL_8.dirname}/trial-05"]
    assert "corrupted JSON" in corrupted.message
    schema = by_run[f"{SMOL_32.dirname}/trial-06"]
    assert schema.kind == "summary" and "schema version 99" in schema.message


def test_summary_keys_are_flattened_and_non_finite_strings_become_floats(mixed):
    runs = mixed.runs.set_index("run")
    diverged = runs.loc[f"{SMOL_8.dirname}/trial-04"]
    assert math.isinf(diverged["metrics.perplexity_token_weighted"])
    assert math.isnan(diverged["divergence.last_loss"])
    assert diverged["divergence.step"] == 7
    done = runs.loc[f"{SMOL_32.dirname}/trial-02"]
    assert done["metrics.perplexity_token_weighted"] == 19.0
    assert done["optimizer.effective.paging_effective"] == False
    assert done["seeds.lora_init"] == 1002
    assert done["environment.packages.torch"] == "2.13.0"
    assert (done["model"], done["optim"], done["variant"], done["trial"]) == (
        "smollm2-135m", "paged_adamw_32bit", "", 2)
    failed = runs.loc[f"{SMOL_32.dirname}/trial-04"]
    assert failed["error.type"] == "MemoryError"


def test_curves_and_generations_are_long_frames(mixed):
    curves = mixed.curves
    one = curves[(curves["cell"] == SMOL_FIXED.dirname) & (curves["trial"] == 1)]
    assert list(one[one["split"] == "train"]["loss"]) == pytest.approx(
        [3.0 - 0.1 * i for i in range(10)])
    assert sorted(one[one["split"] == "val"]["step"]) == [5, 10]
    # the half-finished run's partial curve is kept, tagged with its status
    assert set(curves[curves["status"] == "incomplete"]["trial"]) == {5}
    gens = mixed.generations
    assert len(gens[gens["run"] == f"{SMOL_8.dirname}/trial-01"]) == 4  # 2 prompts × 2 modes
    assert set(gens["mode"]) == {"greedy", "sampled"}
    assert gens[(gens["run"] == f"{SMOL_8.dirname}/trial-01") & (gens["mode"] == "greedy")
                & (gens["prompt_index"] == 0)]["completion"].item() == "quiet 1"


def test_a_summary_that_contradicts_its_directory_is_a_problem(tmp_path):
    write_run(tmp_path, "s", SMOL_8, 1, summary={"trial": 3})
    study = load_study(tmp_path / "s")
    assert [p.kind for p in study.problems] == ["mismatch"]
    assert "trial=3" in study.problems[0].message


def test_a_folder_that_is_not_a_cell_is_a_problem_not_a_run(tmp_path):
    write_run(tmp_path, "s", SMOL_8, 1)
    (tmp_path / "s" / "notes" / "trial-01").mkdir(parents=True)
    study = load_study(tmp_path / "s")
    assert len(study.runs) == 1
    assert [p.kind for p in study.problems] == ["layout"]


def test_missing_or_empty_study_raises(tmp_path):
    with pytest.raises(StudyError, match="no such study"):
        load_study(tmp_path / "nope")
    (tmp_path / "empty" / "_sweeps").mkdir(parents=True)
    with pytest.raises(StudyError, match="no run directories"):
        load_study(tmp_path / "empty")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": "inf", "d": []}, "e": None}) == {
        "a.b": 1, "a.c": math.inf, "a.d": [], "e": None}


def test_fixture_runs_pass_the_contract_checks(tmp_path):
    path = write_run(tmp_path, "s", SMOL_8, 1)
    assert artifacts.run_state(path) == "complete"
    assert artifacts.read_summary(path)["adapter"]["sha256"] == adapter_files.adapter_sha256(path)


def test_corrupted_curve_and_generations_are_problems_and_the_run_stays(tmp_path):
    """A run written before manifests existed: unreadable files are problems, its summary counts.
    (With a manifest the run would be ``corrupted``: see tests/test_integrity.py.)"""
    path = write_run(tmp_path, "s", SMOL_8, 1)
    (path / artifacts.MANIFEST).unlink()
    artifacts.write_text(path / artifacts.LOSS_CURVE, "step,epoch\nx,1\n")
    artifacts.write_text(path / artifacts.GENERATIONS, '{"prompt_index": 0}\n{broken\n')
    study = load_study(tmp_path / "s")
    assert sorted(p.kind for p in study.problems) == ["generations", "loss_curve"]
    assert list(study.runs["status"]) == ["complete"]
    assert study.runs["metrics.perplexity_token_weighted"].item() == 10.0
    assert study.curves.empty and study.generations.empty
