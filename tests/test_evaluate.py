"""Both perplexity definitions against hand-computed numbers; answer-letter extraction."""

from __future__ import annotations

import math

import pytest

from repeatability.trial.evaluate import answer_letter, perplexity


def test_token_weighted_and_mean_per_sequence() -> None:
    # sequence 1: 2 targets with NLL 1 and 3 (sum 4); sequence 2: 1 target with NLL 0.5
    ppl = perplexity([(4.0, 2), (0.5, 1)])
    assert ppl.token_weighted == pytest.approx(math.exp(4.5 / 3))
    assert ppl.mean_per_sequence == pytest.approx((math.exp(2.0) + math.exp(0.5)) / 2)
    assert (ppl.tokens, ppl.sequences) == (3, 2)
    assert ppl.mean_per_sequence > ppl.token_weighted  # the worst sequence dominates the mean


def test_overflow_is_inf_not_an_error() -> None:
    assert perplexity([(800.0, 1)]).token_weighted == math.inf


@pytest.mark.parametrize("text,letter", [
    (" The answer is B.", "B"), ("B: If you are able to write", "B"), ("(C) because", "C"),
    (" D", "D"), ("I think answer: A", "A"), ("Nothing here", None),
])
def test_answer_letter(text: str, letter: str | None) -> None:
    assert answer_letter(text) == letter
