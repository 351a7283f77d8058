"""Where the variance comes from: OFAT components and the crossed-design ANOVA, on synthetic
data with known components and on a synthetic variance-sources study."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import SMOL_8, write_run
from scipy import stats as sps
from variance_fixtures import CROSSED_Y, OFAT_CELLS, ofat_seeds, write_variance_sources_study

from analysis.compute import adapter_distance, anova, variance
from analysis.load import load_study
from analysis.present import prose
from repeatability.records import artifacts

SIGMAS = {"lora_init": 0.03, "data_order": 0.02, "dropout": 0.01}
FLOOR = 0.005


@pytest.fixture(scope="module")
def vs_study(tmp_path_factory):
    return load_study(write_variance_sources_study(tmp_path_factory.mktemp("results")))


def test_pair_variance_is_the_sample_variance_and_the_trace_of_the_covariance():
    rng = np.random.default_rng(3)
    y = rng.normal(size=7)
    assert variance.pair_variance(variance.scalar_d2(y)) == pytest.approx(y.var(ddof=1))
    x = rng.normal(size=(5, 4))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    assert variance.pair_variance(d2) == pytest.approx(np.trace(np.cov(x.T)))


def test_known_components_are_recovered():
    """log-ppl = μ + a_source + ε_floor with known σ's and 300 trials per cell."""
    rng = np.random.default_rng(7)
    n = 300
    d2s = {variance.BASELINE: variance.scalar_d2(3 + rng.normal(0, FLOOR, n))}
    for source, sigma in SIGMAS.items():
        d2s[source] = variance.scalar_d2(3 + rng.normal(0, sigma, n) + rng.normal(0, FLOOR, n))
    table = variance.components(d2s, n_resamples=400).set_index("source")
    truth = {s: v ** 2 for s, v in SIGMAS.items()} | {variance.BASELINE: FLOOR ** 2}
    total = sum(truth.values())
    for source, var in truth.items():
        row = table.loc[source]
        assert row["component"] == pytest.approx(var, rel=0.25), source
        assert row["share"] == pytest.approx(var / total, abs=0.05), source
        assert row["share_ci_low"] <= var / total <= row["share_ci_high"], source
    assert table["share"].sum() == pytest.approx(1.0)
    assert table.loc["lora_init", "std"] == pytest.approx(math.hypot(0.03, FLOOR), rel=0.1)


def test_components_subtract_the_floor_and_clip_at_zero():
    d2s = {variance.BASELINE: variance.scalar_d2([0.0, 0.1, 0.2]),  # variance 0.01
           "lora_init": variance.scalar_d2([0.0, 0.2, 0.4]),  # 0.04 → component 0.03
           "dropout": variance.scalar_d2([0.0, 0.05, 0.1])}  # 0.0025 < floor → 0
    table = variance.components(d2s, n_resamples=200).set_index("source")
    assert table["component"].to_dict() == pytest.approx(
        {variance.BASELINE: 0.01, "lora_init": 0.03, "dropout": 0.0})
    assert table.loc["lora_init", "share"] == pytest.approx(0.75)
    no_floor = variance.components({"lora_init": variance.scalar_d2([1.0, 2.0]),
                                    "dropout": variance.scalar_d2([1.0])}, n_resamples=200)
    assert no_floor["component"].iloc[0] == pytest.approx(0.5)
    assert math.isnan(no_floor["share"].iloc[1])  # one trial: no variance, no share


def test_ofat_design_reads_the_varied_source_from_the_rules(tmp_path):
    # variant name says dropout, rules say lora_init: the rules win
    misnamed = artifacts.CellKey("m", "d", "o", "vary-dropout")
    for trial in (1, 2):
        write_run(tmp_path, "s", misnamed, trial, summary={"seeds": ofat_seeds("lora_init", trial)})
        write_run(tmp_path, "s", artifacts.CellKey("m", "d", "o", "vary-nothing"), trial,
                  summary={"seeds": ofat_seeds(None, trial)})
        write_run(tmp_path, "s", SMOL_8, trial)  # every source per trial: not OFAT
    design = variance.ofat_design(load_study(tmp_path / "s").runs)
    assert design.to_dict("records") == [
        {"group": "m__d__o", "cell": "m__d__o__vary-dropout", "source": "lora_init"},
        {"group": "m__d__o", "cell": "m__d__o__vary-nothing", "source": variance.BASELINE}]


def test_decompose_the_synthetic_study(vs_study):
    pairs = adapter_distance.pair_table(vs_study.runs, vs_study.path)
    table = variance.decompose(vs_study.runs, pairs, n_resamples=999)
    assert set(table["group"]) == {"smollm2-135m__quotes__paged_adamw_8bit"}
    log_ppl = table[table["metric"] == "log perplexity"].set_index("source")
    assert log_ppl.loc["lora_init", "cell"] == OFAT_CELLS["vary-lora-init"].dirname
    assert log_ppl["std"].to_dict() == pytest.approx(
        {variance.BASELINE: 0.0, "lora_init": 0.1, "data_order": 0.05, "dropout": 0.02})
    total = 0.01 + 0.0025 + 0.0004
    assert log_ppl.loc["lora_init", "share"] == pytest.approx(0.01 / total)
    # 3 trials, s = 0.1: the χ² interval on 2 df, sqrt(2 s² / χ²(0.975; 2) = 7.3778) to sqrt(2 s² / 0.050636)
    assert (log_ppl.loc["lora_init", "std_ci_low"], log_ppl.loc["lora_init", "std_ci_high"]) \
        == pytest.approx((math.sqrt(0.02 / 7.377759), math.sqrt(0.02 / 0.0506356)), rel=1e-5)
    # lora_init against the next largest (data_order): F = 0.01 / 0.0025 = 4 on (2, 2) df, p = 1 / (1 + F)
    assert log_ppl.loc["lora_init", ["f_vs_next", "f_p"]].tolist() == pytest.approx([4.0, 0.2])
    assert log_ppl.loc["data_order", "f_vs_next"] == pytest.approx(0.0025 / 0.0004)
    assert math.isnan(log_ppl.loc["dropout", "f_vs_next"]) and math.isnan(log_ppl.loc[variance.BASELINE, "f_p"])
    loss = table[table["metric"] == "final train loss"].set_index("source")
    assert loss["variance"].to_dict() == pytest.approx(
        {variance.BASELINE: 0.0, "lora_init": 0.01, "data_order": 0.03, "dropout": 0.0003})
    weights = table[table["metric"] == variance.WEIGHTS].set_index("source")
    # tr(Cov ΔW) / mean ||ΔW||²: lora_init 5/12, data_order 1/3, dropout (2−2cos10°)·2+(2−2cos20°)
    dropout = (4 * (1 - math.cos(math.radians(10))) + 2 * (1 - math.cos(math.radians(20)))) / 12
    assert weights["variance"].to_dict() == pytest.approx(
        {variance.BASELINE: 0.0, "lora_init": 5 / 12, "data_order": 1 / 3, "dropout": dropout})
    assert weights.loc["lora_init", "mean"] == pytest.approx(2 * math.sqrt(2))  # ||ΔW||_F


def test_answer_names_the_source_in_numbers(vs_study):
    table = variance.decompose(vs_study.runs, None, n_resamples=999)
    (text,) = prose.variance_answer(table, where="on cpu")
    assert text.startswith("`smollm2-135m__quotes__paged_adamw_8bit` on cpu: `lora_init` has the largest "
                           "std (not significantly more than `data_order`: variance ratio F = 4 on (2, 2) df, "
                           "one-sided p = 0.2): std of log perplexity 0.1 (95% CI 0.0521–0.628), i.e. "
                           "perplexity varies by a factor of about 1.105 between trials; 78% of "
                           "the variance")
    assert "Then `data_order` std 0.05 (19%), `dropout` std 0.02 (3%)." in text
    assert text.endswith("the 3 trials have identical perplexity: the floor is 0.")


def test_anova_matches_hand_sums_of_squares(vs_study):
    (design,) = anova.crossed_designs(vs_study.runs)
    assert design.factors == ("optim", "variant") and design.trials == (1, 2) and design.blocked
    frame = anova.design_frame(vs_study.runs, design, anova.RESPONSES[0][1], True)
    assert sorted(frame["y"]) == pytest.approx(sorted(CROSSED_Y.values()))
    table = anova.anova_table(frame, design.factors).set_index("term")
    assert table["sum_sq"].to_dict() == pytest.approx(
        {"optim": 0.02, "variant": 0.18, anova.BLOCK_LABEL: 0.005, "optim × variant": 0.0,
         "residual": 0.0008, "total": 0.2058}, abs=1e-12)
    assert table.loc["residual", "df"] == 3 and table.loc["optim", "F"] == pytest.approx(75)
    assert table.loc["optim", "p"] == pytest.approx(sps.f.sf(75, 1, 3))
    assert table.loc["variant", "eta2"] == pytest.approx(0.18 / 0.2058)
    assert table.loc["optim", "partial_eta2"] == pytest.approx(0.02 / 0.0208)
    low, high = table.loc["optim", ["partial_eta2_ci_low", "partial_eta2_ci_high"]]
    assert low < 0.02 / 0.0208 < high


def test_anova_recovers_a_known_effect():
    """2 optimizers × 2 quantizations × 40 blocks, y = .1·[8-bit] + .3·[none] + block + ε."""
    rng = np.random.default_rng(11)
    rows = [{"optim": o, "variant": v, "trial": t,
             "y": 0.1 * (o == "8bit") + 0.3 * (v == "none") + 0.02 * t + rng.normal(0, 0.05)}
            for t in range(40) for o in ("8bit", "32bit") for v in ("nf4", "none")]
    table = anova.anova_table(pd.DataFrame(rows), ("optim", "variant")).set_index("term")
    # SS of a ±d/2 effect over N = 160 observations: N·(d/2)²
    assert table.loc["optim", "sum_sq"] == pytest.approx(160 * 0.05 ** 2, rel=0.25)
    assert table.loc["variant", "sum_sq"] == pytest.approx(160 * 0.15 ** 2, rel=0.1)
    assert table.loc["residual", "sum_sq"] / table.loc["residual", "df"] == pytest.approx(
        0.05 ** 2, rel=0.15)
    assert table.loc["optim × variant", "p"] > 0.01 and table.loc["variant", "p"] < 1e-10


def test_noncentral_f_interval_covers_the_true_noncentrality():
    rng = np.random.default_rng(5)
    a, n_per, sims = 0.6, 8, 600
    lam = 2 * n_per * a ** 2  # two groups at ±a, σ = 1
    hits = 0
    for _ in range(sims):
        f = sps.f_oneway(rng.normal(a, 1, n_per), rng.normal(-a, 1, n_per)).statistic
        low, high = anova.noncentrality_ci(f, 1, 2 * n_per - 2)
        hits += low <= lam <= high
    assert 0.92 <= hits / sims <= 0.98


def test_anova_refuses_a_constant_response_and_handles_a_perfect_fit():
    frame = pd.DataFrame({"y": [3.0] * 4, "optim": ["a", "b"] * 2, "trial": [1, 1, 2, 2]})
    with pytest.raises(ValueError, match="does not vary"):
        anova.anova_table(frame, ("optim",))
    frame["y"] = [3.0, 3.5, 3.1, 3.6]  # exactly additive: residual 0
    table = anova.anova_table(frame, ("optim",)).set_index("term")
    assert table.loc["optim", "F"] == math.inf and table.loc["optim", "p"] == 0
    assert table.loc["optim", "eta2"] == pytest.approx(0.25 / 0.26)
