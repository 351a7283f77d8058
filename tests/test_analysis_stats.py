"""Statistics against numbers computed by hand (plain arithmetic) on the paper's Table 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
from analysis_fixtures import PAPER_TABLE1, SMOL_8, SMOL_32, write_mixed_study, write_paper_study

from analysis.compute import stats
from analysis.load import load_study

LLAMA_8 = PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_8bit")]
LLAMA_32 = PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_32bit")]
NEOX_8 = PAPER_TABLE1[("gpt-neox-20b", "paged_adamw_8bit")]
NEOX_32 = PAPER_TABLE1[("gpt-neox-20b", "paged_adamw_32bit")]


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    return load_study(write_paper_study(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    return load_study(write_paper_study(tmp_path_factory.mktemp("results"), paired=False))


def _by_hand(values):
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    gmean = math.exp(sum(math.log(v) for v in values) / n)
    return mean, var ** 0.5, gmean


@pytest.mark.parametrize("values", [LLAMA_8, LLAMA_32])
def test_describe_matches_hand_arithmetic(values):
    mean, std, gmean = _by_hand(values)
    got = stats.describe(values)
    assert got["n"] == 7
    assert got["mean"] == pytest.approx(mean, rel=1e-12)
    assert got["std"] == pytest.approx(std, rel=1e-12)
    assert got["cv"] == pytest.approx(std / mean, rel=1e-12)
    assert got["gmean"] == pytest.approx(gmean, rel=1e-12)
    s = sorted(values)
    assert got["median"] == s[3]
    # quartiles by linear interpolation: position (n-1)/4 = 1.5 and 3(n-1)/4 = 4.5
    q1, q3 = s[1] + 0.5 * (s[2] - s[1]), s[4] + 0.5 * (s[5] - s[4])
    assert got["q1"] == pytest.approx(q1) and got["q3"] == pytest.approx(q3)
    assert got["iqr"] == pytest.approx(q3 - q1)
    log_mean = sum(math.log(v) for v in values) / 7
    log_sd = (sum((math.log(v) - log_mean) ** 2 for v in values) / 6) ** 0.5
    assert got["gstd"] == pytest.approx(math.exp(log_sd), rel=1e-12)
    assert got["spread"] == pytest.approx(max(values) / min(values), rel=1e-12)


def test_describe_pins_llama_8bit_numbers():
    # Independently computed: mean of the 7 values, and their spread 233812.79 / 12.471.
    got = stats.describe(LLAMA_8)
    assert got["mean"] == pytest.approx(694700.068 / 7, rel=1e-9)
    assert got["median"] == 109585.75
    assert got["spread"] == pytest.approx(18748.5197658, rel=1e-9)


def test_describe_edge_cases():
    assert math.isnan(stats.describe([])["mean"])
    one = stats.describe([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["std"])
    assert math.isnan(stats.describe([-1.0, 2.0])["gmean"])


def test_bootstrap_ci_is_reproducible_and_brackets_the_statistic():
    mean, std, _ = _by_hand(LLAMA_32)
    low, high = stats.bootstrap_ci(LLAMA_32, "mean", seed=3)
    assert (low, high) == stats.bootstrap_ci(LLAMA_32, "mean", seed=3)
    assert min(LLAMA_32) <= low < mean < high <= max(LLAMA_32)
    s_low, s_high = stats.bootstrap_ci(LLAMA_32, "std")
    assert 0 <= s_low < std < s_high
    # resampling 7 values can never give a std above that of the most extreme half-half split
    assert s_high <= (max(LLAMA_32) - min(LLAMA_32)) * 0.6
    m_low, m_high = stats.bootstrap_ci(LLAMA_32, "median")
    assert min(LLAMA_32) <= m_low <= sorted(LLAMA_32)[3] <= m_high <= max(LLAMA_32)
    g_low, g_high = stats.bootstrap_ci(LLAMA_8, "gmean")
    assert g_low < _by_hand(LLAMA_8)[2] < g_high
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert stats.bootstrap_ci([2.0, 2.0, 2.0], "std") == (0.0, 0.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0, 2.0]))


def test_mann_whitney_and_effect_sizes_on_paper_columns():
    got = stats.compare_values(NEOX_8, NEOX_32)
    assert got["mwu_u"] == 49.0  # every 8-bit perplexity is above every 32-bit one
    assert got["p_x_gt_y"] == 1.0 and got["rank_biserial"] == 1.0
    assert got["mwu_p"] == pytest.approx(2 / math.comb(14, 7), rel=1e-9)  # exact, no ties


def test_common_language_effect_size_counts_ties_as_half():
    # pairs (x, y): x > y in 2 of 9 pairs, ties in 2 → P = (2 + 0.5 * 2) / 9
    got = stats.compare_values([1.0, 2.0, 3.0], [2.0, 2.0, 4.0])
    assert got["p_x_gt_y"] == pytest.approx(3 / 9)
    assert got["rank_biserial"] == pytest.approx(2 * 3 / 9 - 1)


def _anova_f(groups):
    """One-way ANOVA F by hand."""
    all_values = [v for g in groups for v in g]
    grand = sum(all_values) / len(all_values)
    means = [sum(g) / len(g) for g in groups]
    between = sum(len(g) * (m - grand) ** 2 for g, m in zip(groups, means)) / (len(groups) - 1)
    within = sum((v - m) ** 2 for g, m in zip(groups, means) for v in g)
    within /= len(all_values) - len(groups)
    return between / within


def _median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def test_brown_forsythe_is_anova_on_distances_to_the_median():
    groups = [NEOX_8, NEOX_32]
    deviations = [[abs(v - _median(g)) for v in g] for g in groups]
    logs = [[math.log(v) for v in g] for g in groups]
    log_dev = [[abs(v - _median(g)) for v in g] for g in logs]
    got = stats.compare_values(NEOX_8, NEOX_32)
    assert got["bf_stat"] == pytest.approx(_anova_f(deviations), rel=1e-9)
    assert got["bf_log_stat"] == pytest.approx(_anova_f(log_dev), rel=1e-9)
    assert got["bf_log_p"] < 0.05 < got["bf_p"]  # spread differs clearly only as a ratio


def test_cell_stats_on_the_paper_study(paper):
    table = stats.cell_stats(paper.runs).set_index("cell")
    row = table.loc["llama2-7b-hf__quotes__paged_adamw_8bit"]
    mean, std, gmean = _by_hand(LLAMA_8)
    assert (row["n_runs"], row["n_complete"], row["n"]) == (7, 7, 7)
    assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
    assert row["gmean"] == pytest.approx(gmean)
    assert row["mean_ci_low"] <= row["mean"] <= row["mean_ci_high"]
    assert row["std_ci_low"] <= row["std_ci_high"]
    assert row["gmean_ci_low"] <= row["gmean"] <= row["gmean_ci_high"]
    assert len(table) == 8


def test_seed_matched_arms_are_compared_pairwise(paper):
    got = stats.compare_cells(paper.runs, "llama2-7b-hf__quotes__paged_adamw_8bit",
                              "llama2-7b-hf__quotes__paged_adamw_32bit")
    assert got["paired"] is True and got["paired_trials"] == list(range(1, 8))
    # all 7 differences positive: W = 0, exact two-sided p = 2 / 2**7
    assert got["wilcoxon_stat"] == 0.0
    assert got["wilcoxon_p"] == pytest.approx(2 / 2 ** 7)
    diffs = sorted(a - b for a, b in zip(LLAMA_8, LLAMA_32))
    assert got["median_paired_diff"] == pytest.approx(diffs[3])


def test_arms_with_different_seeds_are_not_paired(unpaired):
    got = stats.compare_cells(unpaired.runs, "llama2-7b-hf__quotes__paged_adamw_8bit",
                              "llama2-7b-hf__quotes__paged_adamw_32bit")
    assert got["paired"] is False and "wilcoxon_p" not in got
    assert got["mwu_u"] == 49.0


def test_comparison_pairs_put_the_8bit_arm_first(paper):
    pairs = stats.comparison_pairs(paper.runs)
    assert len(pairs) == 4
    assert all(x.endswith("8bit") and y.endswith("32bit") for x, y in pairs)
    assert len(stats.compare_all(paper.runs)) == 4


def test_cell_stats_counts_every_status(tmp_path):
    study = load_study(write_mixed_study(tmp_path))
    table = stats.cell_stats(study.runs).set_index("cell")
    eight, thirty_two = table.loc[SMOL_8.dirname], table.loc[SMOL_32.dirname]
    # 8-bit: 3 complete + 1 diverged (ppl inf: finished but not finite) + 1 unreadable summary
    assert (eight["n_runs"], eight["n_complete"], eight["n_diverged"]) == (5, 3, 1)
    assert (eight["n_unreadable"], eight["n_nonfinite"], eight["n"]) == (1, 1, 3)
    assert eight["median"] == 25.0
    # 32-bit: 3 complete, 1 failed, 1 incomplete, 1 unknown schema (unreadable)
    assert (thirty_two["n_failed"], thirty_two["n_incomplete"]) == (1, 1)
    assert (thirty_two["n_unreadable"], thirty_two["n"]) == (1, 3)
    assert thirty_two["mean"] == pytest.approx((18 + 19 + 20.5) / 3)


def test_all_zero_paired_differences_give_no_p_value():
    same = np.array([1.0, 2.0, 3.0])
    got = stats._wilcoxon(same, same.copy())
    assert math.isnan(got["wilcoxon_p"]) and got["n_pairs_zero"] == 3
    assert got["note"] == "all paired differences are zero"
