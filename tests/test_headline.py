"""The report's headline (analysis/present/headline.py): at most three sentences computed from the
results — the numbers of the published default study, a reproduction bit for bit and one that
is not, and the sentence counter the browser tier uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis.config import AnalysisConfig
from analysis.load import load_study
from analysis.present import headline
from analysis.report import compute
from tests.analysis_fixtures import SMOL_8, SMOL_32, write_default_like_study, write_run

ROOT = Path(__file__).resolve().parents[1]


def test_sentences_are_counted_without_splitting_numbers() -> None:
    assert headline.count_sentences("Ratio 1.00021 (95% CI 1.00015–1.00027). `8-bit` blew up 0/7.") == 2
    assert headline.count_sentences("One sentence with p = 6.8e-15 and 2.5%.") == 1


def test_relative_percent_wording() -> None:
    assert headline.rel_percent(0.0246) == "2.5%" and headline.rel_percent(2.106e-4, signed=True) == "+0.021%"
    assert headline.rel_percent(-0.23) == "−23.0%" and headline.rel_percent(float("nan")) == "–"


def test_published_default_study_headline_numbers() -> None:
    """results/default: 2.5% spread in each arm (max/min 1.0246, 1.0247), 8-bit +0.021% (CI +0.015%
    to +0.027%), equivalent within ±1% (TOST p = 6.8e-15), yet 8-bit higher in 7/7 pairs."""
    r = compute(load_study(ROOT / "results" / "default"), AnalysisConfig())
    text = headline.headline(r)
    assert headline.count_sentences(text) == 2
    assert "varied by 2.5% for `8-bit` (n = 7) and 2.5% for `32-bit` (n = 7)" in text
    assert "moved perplexity by +0.021% (7 paired trials, 95% CI +0.015% to +0.027%)" in text
    assert "equivalent within ±1% (TOST p = 6.8e-15)" in text and "`8-bit` higher in 7/7 pairs" in text


def test_reproduced_bit_for_bit_names_both_machines() -> None:
    r = compute(load_study(ROOT / "results" / "default-1thread"), AnalysisConfig(),
                [load_study(ROOT / "results" / "default")])
    text = headline.headline(r)
    assert headline.count_sentences(text) == 3
    assert text.endswith("This machine (AMD EPYC, 1 torch thread) reproduced `default` (AMD EPYC, 2 torch "
                         "threads) bit for bit: all 6 seed-matched runs gave the same adapter (SHA-256) and "
                         "the same perplexity.")


def test_a_reproduction_that_moved_says_by_how_much(tmp_path: Path) -> None:
    """The same trials with other bits in one run: 13/14 adapters equal, perplexity off by 1% at most."""
    ours = write_default_like_study(tmp_path / "a")
    theirs = write_default_like_study(tmp_path / "b", study="published")
    shutil.rmtree(theirs / SMOL_8.dirname / "trial-03")
    write_run(tmp_path / "b", "published", SMOL_8, 3, ppl=(30.0 + 3 * 0.37) * 1.01, weight_seed=99,
              losses=[3.0 - 0.1 * i + 0.001 * 3 * i for i in range(10)])
    r = compute(load_study(ours), AnalysisConfig(), [load_study(theirs)])
    text = headline.headline(r)
    assert headline.count_sentences(text) == 3
    assert text.endswith("did not reproduce `published` (AMD EPYC, 2 torch threads) bit for bit: 13/14 "
                         "seed-matched runs gave the same adapter, and perplexity differs by at most 1.0% (n = 14) "
                         "against a spread between seeds of 7.3%.")
    assert r.cross_cells.set_index("cell").loc[SMOL_32.dirname, "adapters_equal"] == "7/7"


@pytest.mark.parametrize("study", ["explain-edge", "variance-sources", "tasks-cpu", "explain-8bit"])
def test_every_published_study_has_a_short_headline(study: str) -> None:
    r = compute(load_study(ROOT / "results" / study), AnalysisConfig())
    text = headline.headline(r)
    assert 1 <= headline.count_sentences(text) <= headline.MAX_SENTENCES, text
