"""Task evaluators (repeatability.trial.tasks) on hand-made examples with known scores: a perfect, an
empty and a wrong prediction; the likelihood-scored classifier on a model whose preferences are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from repeatability.trial import tasks


def test_exact_match_normalises_like_squad() -> None:
    assert tasks.normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert tasks.generation_scores(["The cat sat."], ["cat sat"])["exact_match"] == 1.0


@pytest.mark.parametrize(("prediction", "exact", "rouge1", "rouge2", "rougeL"), [
    ("the cat sat on the mat", 1.0, 1.0, 1.0, 1.0),  # perfect
    ("", 0.0, 0.0, 0.0, 0.0),  # empty
    ("dogs run fast", 0.0, 0.0, 0.0, 0.0),  # wrong: no word in common
    # 3 of 6 reference unigrams, 3 of 3 predicted: P=1, R=0.5, F=2/3; bigrams "the cat", "cat sat": 2 of 5
    # reference bigrams, 2 of 2 predicted: F=2*0.4/1.4; LCS 3: as unigrams
    ("the cat sat", 0.0, 2 / 3, 0.8 / 1.4, 2 / 3),
])
def test_generation_scores_on_known_examples(prediction, exact, rouge1, rouge2, rougeL) -> None:
    got = tasks.generation_scores([prediction], ["the cat sat on the mat"])
    assert got == pytest.approx({"exact_match": exact, "rouge1": rouge1, "rouge2": rouge2, "rougeL": rougeL})


def test_generation_scores_average_over_examples() -> None:
    got = tasks.generation_scores(["the cat sat on the mat", ""], ["the cat sat on the mat", "a dog"])
    assert got["exact_match"] == 0.5 and got["rougeL"] == 0.5
    assert all(math.isnan(v) for v in tasks.generation_scores([], []).values())


def test_per_example_scores_are_the_ones_averaged() -> None:
    """Each example is scored once; the run's means are the means of the kept per-example scores."""
    per = tasks.generation_per_example(["the cat sat", "dogs run fast"], ["the cat sat on the mat", "dogs run"])
    assert per[0] == pytest.approx({"exact_match": 0.0, "rouge1": 2 / 3, "rouge2": 0.8 / 1.4, "rougeL": 2 / 3})
    assert per[1]["rouge1"] == pytest.approx(0.8)  # 2 of 3 predicted, 2 of 2 reference unigrams
    assert tasks.mean_generation_scores(per)["rougeL"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_classification_scores_perfect_wrong_and_partial() -> None:
    classes = ["art", "food", "work"]
    gold = ["art", "food", "work", "work"]
    assert tasks.classification_scores(gold, gold, classes) == {"accuracy": 1.0, "macro_f1": 1.0}
    assert tasks.classification_scores(["food", "work", "art", "art"], gold, classes) == {"accuracy": 0.0,
                                                                                          "macro_f1": 0.0}
    # all "work": accuracy 2/4; F1 work = 2*(0.5*1)/(1.5) = 2/3, art and food 0 -> macro 2/9
    got = tasks.classification_scores(["work"] * 4, gold, classes)
    assert got == pytest.approx({"accuracy": 0.5, "macro_f1": 2 / 9})


def test_subset_is_seeded_sorted_and_hashed() -> None:
    a, b = tasks.select_subset(100, 10, seed=42), tasks.select_subset(100, 10, seed=42)
    assert a == b == sorted(a) and len(set(a)) == 10 and a != tasks.select_subset(100, 10, seed=43)
    assert tasks.select_subset(5, 10, seed=0) == [0, 1, 2, 3, 4] == tasks.select_subset(5, None, seed=0)
    ex = [tasks.TaskExample(0, "q", "a")]
    assert len(tasks.subset_sha256(ex)) == 64
    assert tasks.subset_sha256(ex) != tasks.subset_sha256([tasks.TaskExample(0, "q", "b")])


class _Tok:
    """Characters as tokens (ids 1..), pad 0."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class _Model:
    """Prefers next character 'b' strongly after any context; uniform otherwise."""

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, position_ids=None):
        import torch

        logits = torch.zeros(*input_ids.shape, 256)
        logits[..., ord("b")] = 5.0
        return type("Out", (), {"logits": logits})()


def test_class_logprobs_pick_the_likelier_answer_and_equal_the_difference_of_nlls() -> None:
    lp = tasks.class_logprobs(_Model(), _Tok(), ["Q:"], [["Q:a", "Q:b"]], batch_size=4, device="cpu")
    assert lp.shape == (1, 2) and lp[0, 1] > lp[0, 0]
    log_z = math.log(255 + math.exp(5.0))  # one token after the prompt
    assert lp[0] == pytest.approx([0.0 - log_z, 5.0 - log_z], rel=1e-5)
    assert np.argmax(lp[0]) == 1
