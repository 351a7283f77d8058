"""Trials needed (power), the paper's two ablations, and the one-line bitwise verdicts."""

from __future__ import annotations

import math

import pytest
from analysis_fixtures import SMOL_8, write_mixed_study, write_run
from scipy import stats as sps
from variance_fixtures import OFAT_CELLS, sampled_generations, write_variance_sources_study

from analysis.compute import ablations, power, verdict
from analysis.load import load_study
from analysis.present import prose, sections_variance, verdict_words


@pytest.fixture(scope="module")
def vs_study(tmp_path_factory):
    return load_study(write_variance_sources_study(tmp_path_factory.mktemp("results")))


def _power_nct(d: float, n: int, alpha: float = 0.05) -> float:
    """Two-sided two-sample t-test power from scipy's noncentral t (independent of statsmodels)."""
    df, nc = 2 * n - 2, d * math.sqrt(n / 2)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


@pytest.mark.parametrize(("d", "n"), [(0.5, 64), (0.8, 26), (0.2, 394), (1.0, 17)])
def test_trials_per_arm_textbook_values(d, n):
    # Cohen (1988) Table 2.4.1: d = .2/.5/.8 at power .80 → 393/64/26 (393: normal approximation;
    # the exact noncentral t needs 393.4 → 394)
    assert power.trials_per_arm(d, 1.0) == n
    assert _power_nct(d, n) >= 0.8 > _power_nct(d, n - 1)


def test_trials_per_arm_in_log_perplexity_units():
    # δ = log 1.10 with σ = 0.05 → d = 1.906: n = 6 per arm
    assert power.trials_per_arm(math.log(1.10), 0.05) == 6
    assert _power_nct(math.log(1.10) / 0.05, 6) >= 0.8 > _power_nct(math.log(1.10) / 0.05, 5)
    assert power.trials_per_arm(math.log(1.05), 0.0) == 1  # no spread: one trial shows it
    assert math.isnan(power.trials_per_arm(math.log(1.05), math.nan))
    assert power.trials_per_arm(0.0, 0.1) == math.inf


def test_sigma_upper_bound_is_the_chi_square_interval():
    assert power.sigma_upper(0.1, 3) == pytest.approx(0.1 * math.sqrt(2 / sps.chi2.ppf(0.025, 2)))
    assert power.sigma_upper(0.1, 3) == pytest.approx(0.6285, rel=1e-3)


def test_trials_needed_per_cell(vs_study):
    table = power.trials_needed(vs_study.runs).set_index("cell", drop=False)
    lora = table.loc[OFAT_CELLS["vary-lora-init"].dirname]
    assert lora["n"] == 3 and lora["std_log"] == pytest.approx(0.1)
    for ratio in power.RATIOS:
        assert lora[f"n_{ratio:g}"] == power.trials_per_arm(math.log(ratio), 0.1)
        upper = power.sigma_upper(0.1, 3)
        assert lora[f"n_{ratio:g}_ci_high"] == power.trials_per_arm(math.log(ratio), upper)
    assert lora["n_1.1"] == 19 and lora["n_1.5"] == 3
    d = math.log(1.5) / 0.1
    assert _power_nct(d, 3) >= 0.8 > _power_nct(d, 2)
    nothing = table.loc[OFAT_CELLS["vary-nothing"].dirname]
    assert nothing["std_log"] == 0 and nothing["n_1.05"] == 1
    assert prose.trials_reading(nothing).endswith("no spread at all, so any difference shows in a single "
                                           "trial per arm — as long as the arms are as "
                                           "deterministic as this cell.")
    assert "10% higher perplexity: 19 trials per arm" in prose.trials_reading(lora)


def test_sampling_ablation_identical_and_not(tmp_path, vs_study):
    cells = sections_variance.sampling_by_cell(ablations.sampling(vs_study.generations)).set_index(
        "cell", drop=False)
    row = cells.loc[OFAT_CELLS["vary-lora-init"].dirname]
    assert (row["K"], row["min_seeds"], row["samples_identical"], row["equal_greedy"]) == \
        ("3", 3, "6/6", "6/6")
    assert prose.sampling_line(row).endswith("sampling was greedy here.")
    gens = sampled_generations(7)
    gens[2]["completion"] = " be loud."  # prompt 0, sample 1 differs
    write_run(tmp_path, "s", SMOL_8, 1, generations=gens)
    per_prompt = ablations.sampling(load_study(tmp_path / "s").generations)
    assert per_prompt[["n_distinct", "samples_identical", "equal_greedy"]].values.tolist() == [
        [2, False, False], [1, True, True]]
    line = prose.sampling_line(sections_variance.sampling_by_cell(per_prompt).iloc[0])
    assert "identical to each other in 1/2" in line and line.endswith("changed the text.")


def test_base_repeats_verified_and_not(tmp_path, vs_study):
    table = ablations.base_repeats(vs_study.runs)
    assert len(table) == 20 and table["zero"].all() and set(table["k"]) == {3}
    assert prose.base_statement(table).endswith("→ verified, zero spread.")
    write_run(tmp_path, "s", SMOL_8, 1, summary={"metrics": {
        "base_perplexity_repeats": [64.0, 64.5, 64.0], "base_perplexity_repeat_spread": 0.5}})
    bad = ablations.base_repeats(load_study(tmp_path / "s").runs)
    assert bad["spread"].tolist() == [0.5] and not bad["zero"].any()
    assert "NOT zero in 1 run(s); largest spread 0.5" in prose.base_statement(bad)
    assert "not recorded" in prose.base_statement(bad.iloc[:0])


def test_bitwise_verdict_lines(vs_study, tmp_path):
    bitwise = verdict.bitwise_verdicts(vs_study.runs, vs_study.curves, vs_study.generations)
    data = OFAT_CELLS["vary-data-order"].dirname  # trials 1 and 2: same adapter and curve
    counts = bitwise.set_index("cell").loc[data]
    assert (counts["adapters_distinct"], counts["adapters_alike"], counts["curve_first_step"]) == (2, 2, 2)
    assert counts["seeds_varied"] == ("data_order",) and not counts["bitwise"]
    lines = verdict_words.bitwise_in_words(bitwise).set_index("cell")["line"]
    nothing = OFAT_CELLS["vary-nothing"].dirname
    assert lines[nothing] == (f"`{nothing}`: adapters identical (3/3 same SHA-256), loss curves "
                              "identical, greedy generations identical → bitwise repeatable")
    assert lines[data] == (f"`{data}`: adapters differ (2 distinct SHA-256 in 3 recorded of 3; at "
                           "most 2 alike), loss curves part at step 2, greedy generations "
                           "identical → not bitwise repeatable, as designed (seeds vary: "
                           "data_order)")
    mixed = load_study(write_mixed_study(tmp_path))
    table = verdict.bitwise_verdicts(mixed.runs, mixed.curves, mixed.generations)
    assert table["bitwise"].tolist() == [False, True, False]
    same_seeds = tmp_path / "same"
    for trial in (1, 2):
        write_run(same_seeds, "s", SMOL_8, trial, summary={"seeds": {
            "lora_init": 1, "data_order": 2, "dropout": 3, "generation": 4,
            "rules": {s: "fixed" for s in ("lora_init", "data_order", "dropout", "generation")}}})
    same = load_study(same_seeds / "s")
    row = verdict_words.bitwise_in_words(verdict.bitwise_verdicts(same.runs, same.curves, same.generations)).iloc[0]
    assert row["line"].endswith("→ NOT bitwise repeatable under identical seeds")
