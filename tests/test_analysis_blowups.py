"""Blow-up rates, Fisher, TOST, P(X > Y) CIs and the verdict wording, against numbers computed
by hand (binomial/beta quantiles, hypergeometric sums, t distributions) on small fixed arrays."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import (
    PAPER_TABLE1,
    SMOL_8,
    SMOL_32,
    write_default_like_study,
    write_mixed_study,
    write_paper_study,
)
from scipy import stats as sps

from analysis import report
from analysis.compute import blowups, equivalence, stats
from analysis.config import AnalysisConfig
from analysis.load import load_study
from analysis.present import prose, verdict_words

LLAMA_8 = PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_8bit")]
LOG_MARGIN = math.log(1.01)
BASE = np.log([10.00, 10.02, 9.98, 10.01, 9.99, 10.03, 9.97])


def _cp_by_hand(k: int, n: int) -> tuple[float, float]:
    """Clopper–Pearson from beta quantiles."""
    low = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    return low, high


@pytest.mark.parametrize("k, n", [(4, 7), (0, 7), (7, 7), (22, 28)])
def test_clopper_pearson_matches_beta_quantiles(k, n):
    assert blowups.clopper_pearson(k, n) == pytest.approx(_cp_by_hand(k, n), abs=1e-12)


def test_clopper_pearson_pins_four_of_seven():
    low, high = blowups.clopper_pearson(4, 7)
    assert (round(low, 4), round(high, 4)) == (0.1841, 0.9010)
    assert all(math.isnan(v) for v in blowups.clopper_pearson(0, 0))


def test_fisher_matches_hypergeometric_sums():
    # 4/7 vs 0/7 blow-ups: P(a) = C(7,a) C(7,4-a) / C(14,4) = 35, 245, 441, 245, 35 (/1001);
    # two-sided: every table at most as likely as the observed one (a = 4 and a = 0)
    assert blowups.fisher_p(4, 7, 0, 7) == pytest.approx(70 / 1001, rel=1e-12)
    # 7/7 vs 0/7: 1 / C(14,7) per extreme table, two of them
    assert blowups.fisher_p(7, 7, 0, 7) == pytest.approx(2 / math.comb(14, 7), rel=1e-12)
    assert blowups.fisher_p(3, 7, 3, 7) == pytest.approx(1.0)
    assert math.isnan(blowups.fisher_p(1, 3, 0, 0))


def test_clusters_cut_at_gaps_wider_than_a_decade():
    parts = blowups.clusters(LLAMA_8)
    assert parts == [[12.471, 13.541, 14.766], [109585.75, 165687.93, 185572.82, 233812.79]]
    chat = [6.667, 6.490, 145808, 77.938, 46649, 124091, 10769]
    assert [len(p) for p in blowups.clusters(chat)] == [2, 1, 4]
    assert [len(p) for p in blowups.clusters(chat, gap_decades=3.0)] == [7]
    note = verdict_words.bimodality_note(parts, 4, 7)
    assert note == "split: 2 clusters (3 at 12.471–14.766, 4 at 109586–233813)"
    assert verdict_words.bimodality_note(blowups.clusters([10.0, 12.0, 200.0], gap_decades=2.0), 1, 3) == (
        "blow-ups and ordinary runs both present, no gap wider than the threshold")
    assert verdict_words.bimodality_note([], 0, 0) == "no finite perplexity"


def test_paper_study_rates_against_the_recorded_base(tmp_path):
    """The fixture records a base perplexity of 64 in every run: threshold 640."""
    runs = load_study(write_paper_study(tmp_path)).runs
    refs = blowups.references(runs)
    assert set(refs["reference"]) == {blowups.REFERENCE_BASE}
    assert refs["threshold"].tolist() == [640.0] * 4
    rates = blowups.arm_rates(runs).set_index("cell")
    llama = rates.loc["llama2-7b-hf__quotes__paged_adamw_8bit"]
    assert (llama["n"], llama["blowups"]) == (7, 4)
    assert (llama["ci_low"], llama["ci_high"]) == pytest.approx(_cp_by_hand(4, 7))
    assert rates.loc["gpt-neox-20b__quotes__paged_adamw_8bit", "blowups"] == 7  # 790 > 640
    assert rates.loc["llama2-chat-7b__platypus__paged_adamw_8bit", "n_clusters"] == 3
    # k = 100: threshold 6400, so only NeoX's 21024 is left among its 8-bit runs
    high_k = blowups.arm_rates(runs, AnalysisConfig(blowup_k=100)).set_index("cell")
    assert high_k.loc["gpt-neox-20b__quotes__paged_adamw_8bit", "blowups"] == 1


def test_pooled_median_reference_without_a_base(tmp_path):
    runs = load_study(write_paper_study(tmp_path)).runs
    runs["metrics.base_perplexity_token_weighted"] = None
    refs = blowups.references(runs).set_index(["model", "dataset"])
    llama = refs.loc[("llama2-7b-hf", "quotes")]
    pooled = sorted(PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_8bit")]
                    + PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_32bit")])
    assert llama["reference"] == blowups.REFERENCE_POOLED and llama["n_values"] == 14
    assert llama["value"] == pytest.approx((pooled[6] + pooled[7]) / 2)  # (3.567 + 12.471) / 2
    line = prose.reference_lines(refs.loc[[("llama2-7b-hf", "quotes")]].reset_index(),
                                   AnalysisConfig())[0]
    assert line == ("`llama2-7b-hf` × `quotes`: pooled median perplexity of the finished runs "
                    "across arms (no base recorded) = 8.019 from 14 run(s); blow-up above 10 × "
                    "that = 80.19")


def test_a_diverged_run_is_a_blowup(tmp_path):
    runs = load_study(write_mixed_study(tmp_path)).runs
    outcomes = blowups.run_outcomes(runs).set_index(["cell", "trial"])
    diverged = outcomes.loc[(SMOL_8.dirname, 4)]
    assert diverged["status"] == "diverged" and diverged["blowup"] and diverged["known"]
    rates = blowups.arm_rates(runs).set_index("cell")
    assert (rates.loc[SMOL_8.dirname, "n"], rates.loc[SMOL_8.dirname, "blowups"]) == (4, 1)
    row = equivalence.comparisons(runs).iloc[0]  # 8-bit (trials 1-4) vs 32-bit (1-3)
    assert (row["judged_x"], row["blowups_x"], row["n_x"], row["n_y"]) == (4, 1, 3, 3)
    assert row["fisher_p"] == pytest.approx(1.0)


def _tost_paired_by_hand(x, y, m):
    d = np.asarray(x) - np.asarray(y)
    n, se = d.size, d.std(ddof=1) / math.sqrt(d.size)
    return max(sps.t.sf((d.mean() + m) / se, n - 1), sps.t.cdf((d.mean() - m) / se, n - 1))


def _tost_welch_by_hand(x, y, m):
    vx, vy, nx, ny = np.var(x, ddof=1), np.var(y, ddof=1), len(x), len(y)
    se = math.sqrt(vx / nx + vy / ny)
    df = se ** 4 / ((vx / nx) ** 2 / (nx - 1) + (vy / ny) ** 2 / (ny - 1))
    diff = np.mean(x) - np.mean(y)
    return max(sps.t.sf((diff + m) / se, df), sps.t.cdf((diff - m) / se, df))


def test_tost_paired_and_welch_against_the_t_distribution():
    y = BASE - np.log([1.004, 0.998, 1.001, 1.006, 0.997, 1.002, 1.000])
    paired = equivalence.tost(BASE, y, LOG_MARGIN, paired=True)
    assert paired["tost_p"] == pytest.approx(_tost_paired_by_hand(BASE, y, LOG_MARGIN), rel=1e-9)
    assert paired["diff_p"] == pytest.approx(sps.ttest_rel(BASE, y).pvalue, rel=1e-12)
    x3 = np.log([10.0, 12.0, 8.0])
    welch = equivalence.tost(x3, BASE, LOG_MARGIN, paired=False)
    assert welch["tost_p"] == pytest.approx(_tost_welch_by_hand(x3, BASE, LOG_MARGIN), rel=1e-9)
    assert welch["diff_p"] == pytest.approx(sps.ttest_ind(x3, BASE, equal_var=False).pvalue)
    assert welch["diff_test"] == "Welch t-test" and paired["diff_test"] == "paired t-test"
    assert math.isnan(equivalence.tost(x3[:1], BASE, LOG_MARGIN, paired=False)["tost_p"])


@pytest.mark.parametrize("ratios, trials, start", [
    ([1.001, 0.999, 1.000, 1.002, 0.998, 1.001, 0.999], "7 paired trials",
     "equivalent within ±1% (TOST p = 7.8e-07; geometric-mean ratio X/Y = 1)"),
    ([1.20, 1.22, 1.18, 1.21, 1.19, 1.20, 1.20], "7 paired trials",
     "different (p = 8.3e-09): geometric-mean ratio X/Y = 1.2"),
    ([1.05, 0.97, 1.02], "3 paired trials",
     ("inconclusive with 3 paired trials: neither equivalent within ±1% (TOST p = 0.54) nor "
      "different (p = 0.64) at α = 0.05")),
])
def test_verdict_wording_in_each_case(ratios, trials, start):
    x = BASE[:len(ratios)] if len(ratios) == 7 else np.log([10.0, 12.0, 8.0])
    y = x - np.log(ratios)
    got = equivalence.tost(x, y, LOG_MARGIN, paired=True)
    row = pd.Series({**got, "design": "paired", "n_x": len(x), "n_y": len(y)})
    assert verdict_words.comparison_verdict(row, AnalysisConfig()) == start
    assert trials in start or not start.startswith("inconclusive")


def _verdict(tost_p: float, diff_p: float, design: str, n: int, config: AnalysisConfig | None = None) -> str:
    row = pd.Series({"tost_p": tost_p, "diff_p": diff_p, "mean_log_diff": 0.0, "design": design, "n_x": n, "n_y": n})
    return verdict_words.comparison_verdict(row, config or AnalysisConfig())


def test_verdict_needs_tost_for_equivalence_and_a_test_for_difference():
    assert _verdict(0.2, 0.3, "unpaired", 7).startswith("inconclusive with 7 + 7 trials")
    assert _verdict(math.nan, math.nan, "unpaired", 1).startswith("inconclusive with 1 + 1 trials")
    wide = AnalysisConfig(margin=0.05)
    assert _verdict(0.01, 0.5, "paired", 7, wide).startswith("equivalent within ±5%")


def _p_gt_loop(x, y):
    return np.mean([(a > b) + 0.5 * (a == b) for a in x for b in y])


def _p_gt_paired_loop(x, y, idx):
    """Resampled pairs: 1/n within pairs, the rest over comparisons of different trials."""
    n = len(idx)
    within = np.mean([_p_gt_loop([x[i]], [y[i]]) for i in idx])
    other = [_p_gt_loop([x[i]], [y[j]]) for i in idx for j in idx if i != j]
    return within / n + (1 - 1 / n) * (np.mean(other) if other else within)


@pytest.mark.parametrize("paired", [True, False])
def test_p_x_gt_y_ci_is_the_percentile_bootstrap_of_a_plain_loop(paired):
    x, y = np.array([3.0, 1.0, 4.0, 1.5, 5.0]), np.array([2.0, 7.0, 1.0, 8.0, 2.5])
    low, high = stats.p_x_gt_y_ci(x, y, paired=paired, n_resamples=500, seed=3)
    rng = np.random.default_rng(3)
    ix = rng.integers(0, 5, size=(500, 5))
    if paired:
        values = [_p_gt_paired_loop(x, y, a) for a in ix]
        # the original sample gives the point estimate: 1/5 within + 4/5 between trials
        assert _p_gt_paired_loop(x, y, np.arange(5)) == pytest.approx(_p_gt_loop(x, y))
    else:
        values = [_p_gt_loop(x[a], y[b]) for a, b in zip(ix, rng.integers(0, 5, size=(500, 5)))]
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12)
    assert stats.p_x_gt_y_ci(x, y, paired=paired, n_resamples=500, seed=3) == (low, high)
    assert math.isnan(stats.p_x_gt_y_ci(x[:2], y[:2])[0])


def test_comparisons_on_seed_matched_arms(tmp_path):
    """Default-like study: 8-bit = 30 + .37t, 32-bit = 30 + .35t, same seeds per trial."""
    runs = load_study(write_default_like_study(tmp_path)).runs
    pairs = equivalence.comparisons(runs)
    assert list(pairs.columns) == list(equivalence.COLUMNS) and "verdict" not in pairs.columns  # numbers only
    row = verdict_words.comparisons_in_words(pairs, AnalysisConfig()).iloc[0]
    assert (row["x"], row["y"], row["design"]) == (SMOL_8.dirname, SMOL_32.dirname, "paired")
    x = np.log([30.0 + t * 0.37 for t in range(1, 8)])
    y = np.log([30.0 + t * 0.35 for t in range(1, 8)])
    assert row["tost_p"] == pytest.approx(_tost_paired_by_hand(x, y, LOG_MARGIN), rel=1e-9)
    assert row["diff_p"] == pytest.approx(sps.ttest_rel(x, y).pvalue, rel=1e-9)
    assert (row["blowups_x"], row["blowups_y"], row["fisher_p"]) == (0, 0, 1.0)
    # X_t > Y_s exactly when s <= t: P = 28/49; in any resample of pairs, the comparisons
    # between different trials split evenly, so every resample gives 1/7 + 6/7 · ½ = 4/7 too
    assert (row["p_x_gt_y"], row["p_x_gt_y_ci_low"], row["p_x_gt_y_ci_high"]) == \
        pytest.approx((28 / 49, 4 / 7, 4 / 7))
    assert _p_gt_loop(x, y) == pytest.approx(28 / 49)
    assert row["verdict"].startswith("equivalent within ±1% (TOST p = ")
    assert "the difference test also finds the small shift" in row["verdict"]


def test_report_section_and_cli_settings(tmp_path, capsys):
    study = write_paper_study(tmp_path)
    assert report.main([str(study), "--out", str(tmp_path / "r"), "--blowup-k", "100"]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    section = text.split("## Blow-ups and equivalence")[1].split("\n## ")[0]
    assert "blow-up above 100 × that = 6400" in section
    assert re.search(r"\| llama2-7b-hf__quotes__paged_adamw_8bit vs llama2-7b-hf__quotes__"
                     r"paged_adamw_32bit +\| paired +\| 4/7 vs 0/7 +\| 7 / 7 +\| 0.07 +\| 0.99 +\| 0.012 "
                     r"\(paired t-test\) +\| 1.00 \[1.00, 1.00\] +\| different \(p = 0.012\)", section)
    assert "- `llama2-7b-hf__quotes__paged_adamw_8bit`: split: 2 clusters" in section
    assert "blow-up factor k = 100" in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        report.main([str(study), "--margin", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: margin=0.0: must be a fraction in (0, 1), e.g. 0.01 for ±1%\n"
