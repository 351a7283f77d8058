"""Time to blow-up (analysis.compute.survival, sections_survival) on a synthetic horizon study whose
numbers are worked out by hand below.

The study: smollm2-135m × quotes, base perplexity 64 (every fixture run records it), so the
thresholds are ln 64 = 4.159 (k = 1), ln 640 = 6.462 (k = 10), ln 6400 = 8.764 (k = 100); LR 2e-4,
variant ``horizon-lr0.0002``, 60 steps, validation every 5 steps (12 checks; 3.0 unless listed):

    arm (optim)                  trial  validation loss above 3.0      status              k=1   k=10  k=100
    8-bit · 0.41.0 maps           1     5.0 @10, 7.0 @20, 9.0 @40       complete            10    20    40
                                  2     7.0 @35                         complete            35    35    >60
                                  3     4.5 @30                         diverged at 47      30    47d   47d
                                  4     4.5 @30                         complete            30    >60   >60
    8-bit                         1     7.0 @50                         complete            50    50    >60
                                  2-4   –                               complete            >60   >60   >60
    32-bit                        1-2   –                               complete            >60   >60   >60
                                  3     –                               unfinished: left out

(>60: censored at the last step; d: the divergence step, before any crossing.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from analysis_fixtures import write_default_like_study, write_run
from scipy import stats as sps
from statsmodels.duration.survfunc import survdiff

from analysis import report
from analysis.compute import survival
from analysis.config import AnalysisConfig
from analysis.load import load_study
from analysis.present import sections_edge, sections_survival
from analysis.present.document import Doc, render_markdown
from analysis.report import compute
from repeatability.records import artifacts, curve_files
from repeatability.trial.optimtrace import COLUMNS as TRACE_COLUMNS

STEPS = 60
VARIANT = "horizon-lr0.0002"
OPTIMS = ("paged_adamw_8bit-maps_bnb_0.41.0", "paged_adamw_8bit", "paged_adamw_32bit")
CELLS = {o: artifacts.CellKey("smollm2-135m", "quotes", o, VARIANT) for o in OPTIMS}
ARM_041, ARM_8, ARM_32 = (f"smollm2-135m__quotes__{o}__horizon" for o in OPTIMS)
VAL = {(OPTIMS[0], 1): {10: 5.0, 20: 7.0, 40: 9.0}, (OPTIMS[0], 2): {35: 7.0}, (OPTIMS[0], 3): {30: 4.5},
       (OPTIMS[0], 4): {30: 4.5}, (OPTIMS[1], 1): {50: 7.0}}
DIVERGED = {(OPTIMS[0], 3): 47}
TRIALS = {OPTIMS[0]: 4, OPTIMS[1]: 4, OPTIMS[2]: 2}
# update inflation (trace row `all`) of the 0.41.0 arm at steps 10 and 20, per trial
INFLATION = {1: (1.0, 4.0), 2: (2.0, 4.0), 3: (3.0, 4.0), 4: (10.0, 4.0)}
EXPECTED = {  # (arm, trial) → step per k = 1, 10, 100; None: censored at the last step
    (ARM_041, 1): (10, 20, 40), (ARM_041, 2): (35, 35, None), (ARM_041, 3): (30, 47, 47),
    (ARM_041, 4): (30, None, None), (ARM_8, 1): (50, 50, None),
    **{(ARM_8, t): (None, None, None) for t in (2, 3, 4)}, **{(ARM_32, t): (None, None, None) for t in (1, 2)}}


def losses(val: dict[int, float], steps: int = STEPS, diverged_at: int | None = None) -> list[float]:
    """Training losses whose validation rows (the fixture's: loss + 0.2 every 5th step) are 3.0 but
    ``val``; a divergence ends the curve with NaN at its step."""
    out = [val.get(step, 3.0) - 0.2 for step in range(1, (diverged_at or steps) + 1)]
    if diverged_at:
        out[-1] = math.nan
    return out


def _trace(values: tuple[float, float]) -> list[dict]:
    rows = []
    for step, value in zip((10, 20), values):
        for kind, inflation in (("q_proj", 99.0), ("all", value)):  # q_proj must be ignored
            rows.append({c: 1.0 for c in TRACE_COLUMNS} | {"step": step, "optimizer_step": step, "module_kind": kind,
                                                          "n_params": 100, "n_8bit_params": 100,
                                                          "update_inflation": inflation})
    return rows


def write_horizon_study(results, study: str = "horizon", trials: dict[str, int] = TRIALS, steps: int = STEPS,
                        lrs: dict[str, float] | None = None):
    for optim, n in trials.items():
        for trial in range(1, n + 1):
            lr = (lrs or {}).get(optim, 2e-4)
            cell = artifacts.CellKey("smollm2-135m", "quotes", optim, VARIANT if lrs is None else f"horizon-lr{lr}")
            at = DIVERGED.get((optim, trial))
            path = write_run(results, study, cell, trial, ppl=math.inf if at else 30.0,
                             status="diverged" if at else "complete",
                             losses=losses(VAL.get((optim, trial), {}), steps, at),
                             summary={"metrics": {"steps": at or steps}, "optimizer": {"requested": {"lr": lr}},
                                      **({"divergence": {"reason": "loss is NaN", "step": at,
                                                         "last_loss": math.nan}} if at else {})})
            if optim == OPTIMS[0] and trial in INFLATION and lrs is None:
                curve_files.write_optimizer_trace(path, _trace(INFLATION[trial]), TRACE_COLUMNS)
    if trials is TRIALS and lrs is None:
        write_run(results, study, CELLS[OPTIMS[2]], 3, status="incomplete")
    return artifacts.study_dir(results, study)


@pytest.fixture(scope="module")
def horizon_study(tmp_path_factory):
    return load_study(write_horizon_study(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="module")
def surv(horizon_study):
    return survival.compute_survival(horizon_study, AnalysisConfig())


@pytest.fixture(scope="module")
def results(horizon_study):
    return compute(horizon_study, AnalysisConfig())


def test_arms_detected_in_bit_order(surv):
    assert surv.arms == (ARM_041, ARM_8, ARM_32)
    assert (surv.lr, surv.ks, surv.primary, surv.horizon) == (2e-4, (1.0, 10.0, 100.0), 10.0, STEPS)


@pytest.mark.parametrize("k_index, k", [(0, 1.0), (1, 10.0), (2, 100.0)])
def test_first_crossing_divergence_and_censoring_per_k(surv, k_index, k):
    rows = surv.runs[surv.runs["k"] == k].set_index(["arm", "trial"])
    assert len(rows) == len(EXPECTED)
    for key, steps in EXPECTED.items():
        want = steps[k_index]
        row = rows.loc[key]
        assert bool(row["event"]) == (want is not None), key
        assert row["step"] == (want if want is not None else STEPS), key
    assert rows["threshold_nats"].tolist() == pytest.approx([math.log(k * 64)] * len(rows))
    how = rows.loc[(ARM_041, 3), "how"]
    assert how == ("validation loss crossed" if k == 1 else "diverged")  # crossed at 30 before diverging at 47


def test_unfinished_run_left_out_and_listed(surv):
    assert surv.left_out[["cell", "trial", "reason"]].values.tolist() == [
        [CELLS[OPTIMS[2]].dirname, 3, "not finished"]]
    assert not (surv.runs["trial"].eq(3) & surv.runs["arm"].eq(ARM_32)).any()


def test_kaplan_meier_by_hand(surv):
    # 0.41.0 arm at k = 10: blow-ups at 20, 35, 47 and one censored at 60, n = 4:
    # S = 3/4, 2/4, 1/4; Greenwood var = S² Σ d/(n(n−d)); band S^exp(±z·se/(S·|ln S|))
    km = surv.km[(surv.km["arm"] == ARM_041) & (surv.km["k"] == 10.0)]
    assert km["step"].tolist() == [0, 20, 35, 47]
    assert km["n_risk"].tolist() == [4, 4, 3, 2]
    assert km["survival"].tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])
    z, greenwood = sps.norm.ppf(0.975), np.cumsum([1 / (4 * 3), 1 / (3 * 2), 1 / (2 * 1)])
    s = np.array([0.75, 0.5, 0.25])
    width = z * np.sqrt(greenwood) / np.abs(np.log(s))
    assert km["band_low"].tolist()[1:] == pytest.approx(s ** np.exp(width))
    assert km["band_high"].tolist()[1:] == pytest.approx(s ** np.exp(-width))
    assert round(km["band_low"].iloc[1], 4) == 0.1279 and round(km["band_high"].iloc[1], 4) == 0.9605
    none = surv.km[(surv.km["arm"] == ARM_32) & (surv.km["k"] == 10.0)]
    assert none[["step", "survival", "band_low", "band_high"]].values.tolist() == [[0, 1.0, 1.0, 1.0]]


def test_median_step_strictly_below_half(surv):
    arms = surv.arm_table.set_index(["arm", "k"])
    assert arms.loc[(ARM_041, 10.0), "median_step"] == 47  # S = 0.5 at 35, below it first at 47
    assert arms.loc[(ARM_041, 1.0), "median_step"] == 30  # 10, 30, 30, 35: S = 3/4, 1/4, 0
    assert math.isnan(arms.loc[(ARM_041, 100.0), "median_step"])  # 2/4 blew up: not reached
    assert math.isnan(arms.loc[(ARM_8, 10.0), "median_step"])
    low, high = arms.loc[(ARM_041, 10.0), ["median_low", "median_high"]]
    assert low == 20 and high == math.inf  # the band holds 0.5 from step 20 to beyond the horizon


def test_rates_with_clopper_pearson_and_fisher_vs_paper(surv):
    arms = surv.arm_table.set_index(["arm", "k"])
    got = arms.xs(10.0, level="k")[["n", "blowups"]].values.tolist()
    assert got == [[4, 3], [4, 1], [2, 0]]
    ci = sps.binomtest(3, 4).proportion_ci(confidence_level=0.95, method="exact")
    assert arms.loc[(ARM_041, 10.0), ["ci_low", "ci_high"]].tolist() == pytest.approx([ci.low, ci.high])
    assert survival.rate_ci(3, 7, 0.05) == pytest.approx((0.098988, 0.815948), abs=1e-6)
    # each arm against the paper's runs of its precision: 32-bit 0/2 against the paper's 32-bit 0/28 (not
    # its 8-bit 22/28, where P(no blow-up among 2 of 30 runs, 22 of which blew up) = C(8,2)/C(30,2) = 28/435)
    assert arms.loc[(ARM_32, 10.0), ["paper_blowups", "paper_n"]].tolist() == [0, 28]
    assert arms.loc[(ARM_32, 10.0), "fisher_p"] == pytest.approx(1.0)
    assert survival.fisher_vs_paper(0, 2) == pytest.approx(28 / 435)
    assert arms.loc[(ARM_041, 10.0), "fisher_p"] == pytest.approx(1.0)
    assert arms.loc[(ARM_8, 10.0), "fisher_p"] == pytest.approx(
        sps.fisher_exact([[1, 3], [22, 6]]).pvalue)
    assert arms.loc[(ARM_041, 10.0), ["paper_blowups", "paper_n"]].tolist() == [22, 28]
    assert arms.xs(1.0, level="k")["fisher_p"].isna().all()  # only at the primary k


def test_logrank_by_hand(surv):
    # 0.41.0 (20, 35, 47 blew up; 60 censored) against 8-bit (50 blew up; 3 censored at 60), k = 10:
    # at 20: E = 4/8, V = 4·4·1·7/(8²·7); 35: 3/7, 3·4·6/(7²·6); 47: 2/6, 2·4·5/(6²·5); 50: 1/5, 1·4·4/(5²·4)
    expected = 4 / 8 + 3 / 7 + 2 / 6 + 1 / 5
    var = 16 / 64 + 12 / 49 + 8 / 36 + 4 / 25
    chi2 = (3 - expected) ** 2 / var
    row = surv.logrank[(surv.logrank["k"] == 10.0) & (surv.logrank["x"] == ARM_041)
                       & (surv.logrank["y"] == ARM_8)].iloc[0]
    assert row["chi2"] == pytest.approx(chi2) and round(chi2, 4) == 2.6972
    assert row["p"] == pytest.approx(sps.chi2.sf(chi2, 1)) and round(row["p"], 4) == 0.1005
    steps = [20, 35, 47, 60, 50, 60, 60, 60]
    assert row["p"] == pytest.approx(survdiff(np.array(steps, float), np.array([1, 1, 1, 0, 1, 0, 0, 0]),
                                              np.array([0] * 4 + [1] * 4))[1])
    pairs = surv.logrank[surv.logrank["k"] == 10.0][["x", "y"]].values.tolist()
    assert pairs == [[ARM_041, ARM_8], [ARM_041, ARM_32], [ARM_8, ARM_32]]
    none = surv.logrank[(surv.logrank["k"] == 100.0) & (surv.logrank["x"] == ARM_8)].iloc[0]
    assert math.isnan(none["p"])  # 8-bit and 32-bit: no blow-up at k = 100, no test


def test_update_inflation_median_and_iqr(surv):
    bands = surv.inflation.set_index(["arm", "step"])
    assert list(bands.index) == [(ARM_041, 10), (ARM_041, 20)]  # only the 0.41.0 arm was traced
    # step 10: 1, 2, 3, 10 → median 2.5, 25th 1.75, 75th 4.75 (linear); the q_proj rows (99) ignored
    assert bands.loc[(ARM_041, 10), ["n", "median", "q25", "q75"]].tolist() == [4, 2.5, 1.75, 4.75]
    assert bands.loc[(ARM_041, 20), ["median", "q25", "q75"]].tolist() == [4.0, 4.0, 4.0]


def test_setup_facts_recorded(surv):
    assert surv.setup == {"models": ("smollm2-135m",), "steps": STEPS, "compute_dtype": ("float32",),
                          "device": ("cpu",), "batch_size": (), "max_length": ("64",)}


def test_headline_sentences_computed(results):
    sentences = sections_survival.headline_sentences(results)
    assert sentences == [
        ("Within 60 steps at LR 2e-4, runs blew up (validation loss above ln(10 × the base model's perplexity), "
         "or diverged) in `8-bit · 0.41.0 maps` 3/4 (75%, 95% CI 19%–99%; median step to blow-up 47 (95% CI "
         "20 to beyond the horizon)); `8-bit` 1/4 (25%, 95% CI 1%–81%; median step to blow-up not reached); "
         "`32-bit` 0/2 (0%, 95% CI 0%–84%; median step to blow-up not reached); 1 run(s) left out (not "
         "finished)."),
        "Log-rank test of the time to blow-up, `8-bit · 0.41.0 maps` against `8-bit`: p = 0.1."]
    assert sections_survival.answer_figure(results) is not None


def test_section_follows_the_edge_in_the_report(results):
    at = report.SECTIONS.index(sections_edge.LR_EDGE)
    assert report.SECTIONS[at + 1] is sections_survival.SURVIVAL
    doc = Doc("t")
    tables = sections_survival.SURVIVAL.render(doc, results)
    assert doc.blocks[0] == ("heading", (2, "Time to blow-up"))
    assert set(tables) == {"survival_runs", "survival_arms", "survival_logrank", "survival_km",
                           "survival_inflation", "survival_left_out"}
    assert set(doc.figures) == {"survival_km", "survival_inflation"}
    text = render_markdown(doc)
    assert "model smollm2-135m here, 7B–20B" in text and "horizon 60 steps here, ~6,000 (3 epochs) there" in text
    s = sections_survival.SURVIVAL.of(results)
    view = sections_survival._runs_view(s, sections_survival.arm_labels(s))
    assert view.loc[("8-bit · 0.41.0 maps", 3)].tolist() == ["30", "47 (diverged)", "47 (diverged)"]
    assert view.loc[("32-bit", 1)].tolist() == ["> 60"] * 3


def _not_horizon(tmp_path, case: str):
    if case == "default study (4 checks)":
        return write_default_like_study(tmp_path)
    if case == "one run per arm":
        return write_horizon_study(tmp_path, trials={OPTIMS[0]: 1, OPTIMS[1]: 1})
    if case == f"fewer than {survival.MIN_CHECKS} checks":
        return write_horizon_study(tmp_path, steps=5 * (survival.MIN_CHECKS - 1))
    if case == "one arm per LR":
        return write_horizon_study(tmp_path, trials={OPTIMS[0]: 2, OPTIMS[1]: 2},
                                   lrs={OPTIMS[0]: 2e-4, OPTIMS[1]: 1e-4})
    raise ValueError(case)


@pytest.mark.parametrize("case", ["default study (4 checks)", "one run per arm",
                                  f"fewer than {survival.MIN_CHECKS} checks", "one arm per LR"])
def test_not_a_horizon_study_gets_no_section(tmp_path, case):
    study = load_study(_not_horizon(tmp_path, case))
    assert survival.compute_survival(study) is None
    r = compute(study)
    assert sections_survival.SURVIVAL.of(r) is None
    assert sections_survival.headline_sentences(r) == [] and sections_survival.answer_figure(r) is None
    doc = Doc("t")
    assert sections_survival.SURVIVAL.render(doc, r) == {} and doc.blocks == []


def test_grid_arms_are_not_horizon_arms(horizon_study):
    runs = survival.eligible_runs(horizon_study)
    grid = runs.assign(lr=np.where(runs["trial"] % 2 == 0, 1e-4, 2e-4))  # every arm at two LRs: a grid
    assert survival.horizon_arms(grid) == []
    assert survival.horizon_arms(runs) == [ARM_041, ARM_8, ARM_32]
