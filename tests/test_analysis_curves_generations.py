"""Loss-curve dispersion / parting steps and generation agreement, on hand-made numbers."""

from __future__ import annotations

import difflib
import math

import pandas as pd
import pytest
from analysis_fixtures import SMOL_8, SMOL_32, write_run

from analysis.compute import curves, generations
from analysis.load import load_study


def _curve(losses, start=1):
    return pd.DataFrame({"step": range(start, start + len(losses)), "loss": losses})


def test_first_parting_step():
    a = _curve([3.0, 2.5, 2.0, 1.5])
    assert curves.first_parting_step(a, _curve([3.0, 2.5, 2.1, 1.5])) == 3
    assert math.isnan(curves.first_parting_step(a, a.copy()))
    assert curves.first_parting_step(a, _curve([3.0, 2.5, 2.05, 1.5]), atol=0.1) != 3
    assert math.isnan(curves.first_parting_step(a, _curve([3.0, 2.5, 2.05, 1.5]), atol=0.1))
    # NaN parts from a number, NaN and NaN do not part
    assert curves.first_parting_step(a, _curve([3.0, math.nan, 2.0, 1.5])) == 2
    nan = _curve([3.0, math.nan])
    assert math.isnan(curves.first_parting_step(nan, nan.copy()))
    # only common steps count
    assert curves.first_parting_step(a, _curve([2.5, 9.0], start=2)) == 3


@pytest.fixture(scope="module")
def parted(tmp_path_factory):
    """Two seed-matched arms, 3 trials each; arm 8-bit trial 2 parts from trial 1 at step 4."""
    root = tmp_path_factory.mktemp("results")
    base = [3.0, 2.8, 2.6, 2.4, 2.2]
    write_run(root, "s", SMOL_8, 1, losses=base, completions=["a b c d", "x"])
    write_run(root, "s", SMOL_8, 2, losses=base[:3] + [2.5, 2.3], completions=["a b c e", "x"])
    write_run(root, "s", SMOL_8, 3, losses=base, completions=["a b c d", "y"])
    for trial in (1, 2, 3):
        write_run(root, "s", SMOL_32, trial, losses=base[:4] + [2.0], completions=["a", "x"])
    return load_study(root / "s")


def test_dispersion_per_step(parted):
    disp = curves.dispersion(parted.curves).set_index(["cell", "step"])
    row = disp.loc[(SMOL_8.dirname, 4)]
    assert row["n"] == 3 and row["mean"] == pytest.approx((2.4 + 2.5 + 2.4) / 3)
    assert row["range"] == pytest.approx(0.1)
    assert row["std"] == pytest.approx(pd.Series([2.4, 2.5, 2.4]).std())
    assert disp.loc[(SMOL_32.dirname, 5), "std"] == 0.0


def test_within_cell_and_paired_parting(parted):
    within = curves.within_cell_parting(parted.curves).set_index("cell")
    assert within.loc[SMOL_8.dirname, "first_step"] == 4
    assert within.loc[SMOL_8.dirname, "n_pairs_identical"] == 1  # trials 1 and 3
    assert math.isnan(within.loc[SMOL_32.dirname, "first_step"])
    paired = curves.paired_parting(parted.curves, SMOL_8.dirname, SMOL_32.dirname)
    assert list(paired["first_step"]) == [5, 4, 5]
    assert list(paired["final_loss_y"]) == [2.0, 2.0, 2.0]


def test_pairwise_measures_by_hand():
    assert generations.pairwise_exact_match(["a", "a", "b"]) == pytest.approx(1 / 3)
    assert math.isnan(generations.pairwise_exact_match(["a"]))
    # "abcd" vs "abce": 3 matching chars of 8 in total → ratio 2*3/8
    assert generations.mean_pairwise_similarity(["abcd", "abce"]) == pytest.approx(0.75)
    texts = ["kitten", "sitting", "kitten"]
    expected = (difflib.SequenceMatcher(None, "kitten", "sitting").ratio() * 2 + 1) / 3
    assert generations.mean_pairwise_similarity(texts) == pytest.approx(expected)


def test_agreement_and_side_by_side(parted):
    agree = generations.agreement(parted.generations).set_index(["cell", "prompt_index", "mode"])
    row = agree.loc[(SMOL_8.dirname, 0, "greedy")]
    assert (row["n"], row["n_distinct"]) == (3, 2)
    assert row["exact_match"] == pytest.approx(1 / 3)
    assert row["similarity"] == pytest.approx((0.857142857 + 1 + 0.857142857) / 3, rel=1e-6)
    assert agree.loc[(SMOL_32.dirname, 1, "greedy"), "n_distinct"] == 1
    table = generations.side_by_side(parted.generations, 0, "greedy")
    assert list(table.index) == [1, 2, 3]
    assert list(table.columns) == sorted([SMOL_8.dirname, SMOL_32.dirname])
    assert table.loc[2, SMOL_8.dirname] == "a b c e"
    sampled = generations.side_by_side(parted.generations, 0, "sampled")
    assert sampled.loc[2, SMOL_8.dirname] == "a b c e (s)"


def test_answer_letters_only_for_multiple_choice_prompts(tmp_path):
    for trial, letter in ((1, "A"), (2, "C"), (3, None)):
        write_run(tmp_path, "s", SMOL_8, trial, completions=["A: yes", "free text"],
                  letters=[letter, None])
    study = load_study(tmp_path / "s")
    letters = generations.answer_letters(study.generations)
    assert list(letters.columns) == [(SMOL_8.dirname, 0)]
    assert list(letters[(SMOL_8.dirname, 0)]) == ["A", "C", ""]
    agree = generations.agreement(study.generations).set_index(["prompt_index", "mode"])
    assert agree.loc[(0, "greedy"), "n_distinct_letters"] == 2


def test_letter_agreement(tmp_path):
    for trial, letter in ((1, "A"), (2, "A"), (3, "C"), (4, None)):
        write_run(tmp_path, "s", SMOL_8, trial, completions=["x", "y"], letters=[letter, None])
    agree = generations.agreement(load_study(tmp_path / "s").generations)
    row = agree.set_index(["prompt_index", "mode"]).loc[(0, "greedy")]
    assert row["letter_agreement"] == pytest.approx(1 / 6)  # only (1, 2) of 6 pairs agree
    assert math.isnan(agree.set_index(["prompt_index", "mode"]).loc[(1, "greedy"),
                                                                   "letter_agreement"])
