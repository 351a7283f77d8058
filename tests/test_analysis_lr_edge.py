"""The learning-rate edge (analysis.compute.lr_edge, sections_edge) on a synthetic LR-grid study whose
every number is worked out by hand below.

The study: smollm2-135m × quotes, base perplexity 64 (every fixture run records it), k = 10 →
blow-up above 640; LR grid {1e-4, 2e-4, 1e-2} (cells ``...__lr<value>``), two trials per cell:

    arm (optim)           1e-4        2e-4          1e-2
    paged_adamw_8bit      20, 22      30, 1000      diverged, 5000     blow-ups 0/2, 1/2, 2/2
    paged_adamw_32bit     18, 19      21, 23        100, 120           0/2, 0/2, 0/2
    adamw_8bit            20, 21      24, 26        900, 2000          0/2, 0/2, 2/2

Edges: paged 8-bit 2e-4 (1/2 = 50% ≥ 50%), adamw_8bit 1e-2, 32-bit beyond the grid (> 1e-2).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_fixtures import SMOL_8, SMOL_32, write_default_like_study, write_run
from scipy import stats as sps

from analysis import report
from analysis.compute import lr_edge
from analysis.config import AnalysisConfig
from analysis.load import load_study
from analysis.present.document import render_markdown
from repeatability.records import artifacts, curve_files
from repeatability.trial.optimtrace import COLUMNS as TRACE_COLUMNS

GRID = (1e-4, 2e-4, 1e-2)
PPL = {"paged_adamw_8bit": ([20.0, 22.0], [30.0, 1000.0], [math.inf, 5000.0]),
       "paged_adamw_32bit": ([18.0, 19.0], [21.0, 23.0], [100.0, 120.0]),
       "adamw_8bit": ([20.0, 21.0], [24.0, 26.0], [900.0, 2000.0])}
ARM_8 = "smollm2-135m__quotes__paged_adamw_8bit"
ARM_32 = "smollm2-135m__quotes__paged_adamw_32bit"
ARM_A8 = "smollm2-135m__quotes__adamw_8bit"
# update inflation of the `all` row at steps 1, 2, 3 per (optim, lr, trial); top-code share at
# the last step; the q_proj rows say 99 and must be ignored
INFLATION = {("paged_adamw_8bit", 2e-4, 1): [1.0, 2.0, 4.0], ("paged_adamw_8bit", 2e-4, 2): [3.0, 1.0, 8.0],
             ("paged_adamw_32bit", 2e-4, 1): [1.0, 1.0, 1.0], ("paged_adamw_32bit", 2e-4, 2): [1.0, 1.5, 1.25],
             ("paged_adamw_8bit", 1e-2, 2): [2.0, 20.0, 50.0]}
TOP = {1: 0.1, 2: 0.3}


def _trace(values: list[float], trial: int, eight_bit: bool) -> list[dict]:
    rows = []
    for step, value in enumerate(values, 1):
        top = TOP[trial] if eight_bit and step == len(values) else (0.0 if eight_bit else math.nan)
        for kind, inflation in (("q_proj", 99.0), ("all", value)):
            rows.append({"step": step, "optimizer_step": step, "module_kind": kind, "n_params": 100,
                         "n_8bit_params": 100 if eight_bit else 0, "lr": 2e-4, "bias_correction2": 0.5,
                         "applied_update_norm": inflation, "shadow_update_norm": 1.0,
                         "update_inflation": inflation, "v_ratio_median": 1.0 / inflation,
                         "v_ratio_p99": 1.0, "v_ratio_max": 1.0, "v_top_code_fraction": top})
    return rows


def write_lr_study(results, study: str = "edge"):
    for optim, per_lr in PPL.items():
        for lr, ppls in zip(GRID, per_lr):
            cell = artifacts.CellKey("smollm2-135m", "quotes", optim, f"lr{lr}")
            for trial, ppl in enumerate(ppls, 1):
                diverged = math.isinf(ppl)
                path = write_run(results, study, cell, trial, ppl=ppl,
                                 status="diverged" if diverged else "complete",
                                 summary={"optimizer": {"requested": {"lr": lr}}})
                if (optim, lr, trial) in INFLATION:
                    curve_files.write_optimizer_trace(path, _trace(INFLATION[optim, lr, trial], trial,
                                                                 "8bit" in optim), TRACE_COLUMNS)
    return artifacts.study_dir(results, study)


@pytest.fixture(scope="module")
def edge_study(tmp_path_factory):
    return load_study(write_lr_study(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="module")
def edge(edge_study):
    return lr_edge.compute_edge(edge_study, AnalysisConfig())


@pytest.mark.parametrize("variant, arm_variant", [
    ("lr0.0002", ""), ("lr1e-05", ""), ("fixedseed-lr0.001", "fixedseed"),
    ("lr0.01_seeds", "seeds"), ("fixedseed", "fixedseed"), ("slr2", "slr2"), ("", "")])
def test_strip_lr_removes_only_the_lr_label(variant, arm_variant):
    assert lr_edge.strip_lr(variant) == arm_variant


def test_arms_and_lr_come_from_the_summary(edge_study):
    arms = lr_edge.arm_of(edge_study.runs)
    assert set(arms["arm"]) == {ARM_8, ARM_32, ARM_A8}
    assert sorted(arms["lr"].unique()) == list(GRID)
    assert lr_edge.has_lr_axis(arms)


def test_no_lr_axis_gives_none(tmp_path):
    study = load_study(write_default_like_study(tmp_path))  # every run at lr 2e-4
    assert not lr_edge.has_lr_axis(lr_edge.arm_of(study.runs))
    assert lr_edge.compute_edge(study) is None


def test_rates_per_arm_and_lr_with_exact_ci(edge):
    rates = edge.rates.set_index(["arm", "lr"])
    assert len(rates) == 9
    assert rates["blowups"].tolist() == [0, 0, 2, 0, 0, 0, 0, 1, 2]  # arms by name: adamw, paged 32, paged 8
    row = rates.loc[(ARM_8, 2e-4)]
    assert (row["n_finished"], row["n"], row["blowups"], row["rate"]) == (2, 2, 1, 0.5)
    ci = sps.binomtest(1, 2).proportion_ci(confidence_level=0.95, method="exact")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert (row["ppl_median"], row["ppl_min"], row["ppl_max"]) == (515.0, 30.0, 1000.0)
    assert (row["base"], row["threshold"]) == (64.0, 640.0)
    assert rates.loc[(ARM_8, 1e-2), ["ppl_median", "ppl_max"]].tolist() == [math.inf, math.inf]
    assert rates.loc[(ARM_8, 1e-2), "cells"] == "smollm2-135m__quotes__paged_adamw_8bit__lr0.01"


def test_edges_found_and_beyond_the_grid(edge):
    edges = edge.edges.set_index("arm")
    assert edges.loc[ARM_8, ["edge", "beyond", "edge_blowups", "edge_n"]].tolist() == [2e-4, False, 1, 2]
    assert edges.loc[ARM_A8, ["edge", "beyond"]].tolist() == [1e-2, False]
    assert math.isnan(edges.loc[ARM_32, "edge"]) and edges.loc[ARM_32, "beyond"]
    assert edges.loc[ARM_32, "largest_lr"] == 1e-2
    # as intervals: (last LR below the edge, edge]; below: its blow-ups/n
    assert edges.loc[ARM_8, ["edge_low", "edge_high", "below_blowups", "below_n"]].tolist() == [1e-4, 2e-4, 0, 2]
    assert edges.loc[ARM_A8, ["edge_low", "edge_high"]].tolist() == [2e-4, 1e-2]
    assert edges.loc[ARM_32, ["edge_low", "edge_high"]].tolist() == [1e-2, math.inf]


def test_edges_worse_than_base(edge):
    """k = 1: a run blows up as soon as it ends worse than the base model (64 here): 32-bit's 100
    and 120 at 1e-2 (below 10 × 64) put its edge in (2e-4, 1e-2] instead of beyond the grid."""
    base = edge.base_edges.set_index("arm")
    assert base.loc[ARM_32, ["edge_low", "edge_high", "edge_blowups", "edge_n"]].tolist() == [2e-4, 1e-2, 2, 2]
    assert base.loc[ARM_8, ["edge_low", "edge_high"]].tolist() == [1e-4, 2e-4]


def test_ratio_of_edges_and_bounds(edge):
    # x = fewer bits first, then by name: adamw_8bit, paged_adamw_8bit, paged_adamw_32bit
    ratios = edge.ratios.set_index(["x", "y"])
    assert list(ratios.index) == [(ARM_A8, ARM_8), (ARM_A8, ARM_32), (ARM_8, ARM_32)]
    assert ratios.loc[(ARM_A8, ARM_8), "ratio"] == pytest.approx(2e-4 / 1e-2)  # 0.02
    beyond = ratios.loc[(ARM_8, ARM_32)]  # 32-bit beyond 1e-2: its edge / 2e-4 > 1e-2 / 2e-4 = 50
    assert math.isnan(beyond["ratio"]) and beyond["ratio_lower_bound"] == pytest.approx(50.0)
    assert math.isnan(beyond["ratio_upper_bound"])
    assert ratios.loc[(ARM_A8, ARM_32), "ratio_lower_bound"] == pytest.approx(1.0)
    # the ratio as an interval from the edges' intervals: (low_y / high_x, high_y / low_x)
    assert ratios.loc[(ARM_A8, ARM_8), ["ratio_low", "ratio_high"]].tolist() == pytest.approx([1e-4 / 1e-2, 1.0])
    assert ratios.loc[(ARM_8, ARM_32), ["ratio_low", "ratio_high"]].tolist() == pytest.approx([50.0, math.inf])


def test_lr_sensitivity_by_hand(edge):
    # paged 8-bit, log base = ln 64, each run clipped at it (diverged → ln 64):
    #   v(1e-4) = (ln 20 + ln 22)/2 = ln(440)/2 = 3.04339
    #   v(2e-4) = (ln 30 + min(ln 1000, ln 64))/2 = ln(1920)/2 = 3.78004
    #   v(1e-2) = (ln 64 + ln 64)/2 = ln 64 = 4.15888
    # sensitivity = mean(v) − min(v) = (3.04339 + 3.78004 + 4.15888)/3 − 3.04339 = 0.61738
    v = [math.log(440) / 2, math.log(1920) / 2, math.log(64)]
    sens = edge.sensitivity.set_index("arm")
    row = sens.loc[ARM_8]
    assert row["sensitivity"] == pytest.approx(sum(v) / 3 - v[0], abs=1e-12)
    assert round(row["sensitivity"], 5) == 0.61738
    assert (row["best_lr"], row["n_lrs"], row["n_runs"]) == (1e-4, 3, 6)
    assert row["log_base"] == pytest.approx(math.log(64))
    # 32-bit: v = ln(342)/2, ln(483)/2, ln 64 (100 and 120 clipped at 64)
    w = [math.log(342) / 2, math.log(483) / 2, math.log(64)]
    assert sens.loc[ARM_32, "sensitivity"] == pytest.approx(sum(w) / 3 - w[0], abs=1e-12)


def test_inflation_median_and_range_per_step(edge):
    curves = edge.curves.set_index(["arm", "lr", "step"])
    assert len(curves) == 9  # (8-bit, 2e-4), (32-bit, 2e-4), (8-bit, 1e-2) × 3 steps
    cols = ["n", "update_inflation_median", "update_inflation_min", "update_inflation_max"]
    assert curves.loc[(ARM_8, 2e-4, 1), cols].tolist() == [2, 2.0, 1.0, 3.0]
    assert curves.loc[(ARM_8, 2e-4, 2), cols].tolist() == [2, 1.5, 1.0, 2.0]
    assert curves.loc[(ARM_8, 2e-4, 3), cols].tolist() == [2, 6.0, 4.0, 8.0]
    assert curves.loc[(ARM_8, 1e-2, 3), cols].tolist() == [1, 50.0, 50.0, 50.0]
    assert curves.loc[(ARM_32, 2e-4, 3), "v_ratio_median_median"] == pytest.approx((1 + 0.8) / 2)
    end = edge.at_end.set_index(["arm", "lr"])
    assert end.loc[(ARM_8, 2e-4), cols + ["last_step"]].tolist() == [2, 6.0, 4.0, 8.0, 3]
    assert end.loc[(ARM_8, 2e-4), "v_top_code_fraction_median"] == pytest.approx(0.2)  # 0.1, 0.3
    assert math.isnan(end.loc[(ARM_32, 2e-4), "v_top_code_fraction_median"])  # 32-bit state
    assert end.loc[(ARM_32, 2e-4), "update_inflation_median"] == pytest.approx(1.125)  # 1, 1.25


@pytest.fixture(scope="module")
def edge_report(edge_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    md = report.write_report(edge_study.path, out)
    return out, md.read_text()


def test_section_first_before_the_setup_with_numbers(edge_report):
    _, text = edge_report
    assert text.index("## Answer") < text.index("## Learning-rate edge") < text.index("## Verdict per cell") \
        < text.index("## Appendix: setup and environment")
    assert text.split("\n\n")[2].startswith("## Answer")  # the answer opens the report, after the contents
    answer = text.split("## Answer")[1].split("\n## ")[0]
    assert "\n- Edge (between the last LR of the grid below and the first" in answer and "figures/answer.png" in answer
    for phrase in ("`paged_adamw_8bit` in (1e-4, 2e-4] (1/2 blew up at 2e-4, 0/2 at 1e-4)",
                   "`paged_adamw_32bit` in (1e-2, ∞) (no LR up to 1e-2",
                   "`adamw_8bit` in (2e-4, 1e-2]",
                   "edge of `paged_adamw_32bit` / edge of `paged_adamw_8bit` in (50, ∞)",
                   "edge of `paged_adamw_8bit` / edge of `adamw_8bit` in (0.01, 1) (grid points: 0.02)",
                   "Worse than the untrained base model in at least half of the runs: ",
                   "at the paper's LR 2e-4: `paged_adamw_8bit` 6, `paged_adamw_32bit` 1.12",
                   "largest over the grid: `paged_adamw_8bit` 50 (LR 1e-2)",
                   "`paged_adamw_8bit` 0.617 (best LR 1e-4)",
                   "`paged_adamw_8bit`: 1e-4 0/2 [0%, 84%], 2e-4 1/2 [1%, 99%], 1e-2 2/2 [16%, 100%]"):
        assert phrase in answer, phrase


def test_section_figures_and_tables_written(edge_report):
    out, _ = edge_report
    for name in ("answer", "lr_edge_inflation"):  # the perplexity-vs-LR figure is the answer's
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    rates = pd.read_csv(out / "tables" / "lr_edge_rates.csv")
    assert rates["blowups"].sum() == 5
    for stem in ("lr_edge_edges", "lr_edge_ratios", "lr_edge_sensitivity", "lr_edge_inflation_at_end"):
        assert (out / "tables" / f"{stem}.csv").is_file(), stem


def test_no_section_without_an_lr_axis(tmp_path):
    study = load_study(write_default_like_study(tmp_path))
    doc, tables = report.build(study)
    assert ("heading", (2, "Learning-rate edge")) not in doc.blocks
    assert not any(name.startswith("lr_edge") for name in list(tables) + list(doc.figures))
    assert {SMOL_8.dirname, SMOL_32.dirname} == set(study.runs["cell"])


def test_predicted_block_max_inflation_of_the_0_41_0_map():
    """sqrt((1 - 0.999^t)(1 - 0.0933 * 0.999)/(1 - 0.999)): by hand, t = 200: sqrt(0.18135 *
    906.79) = 12.82; t = 1,000: sqrt(0.63230 * 906.79) = 23.94; t = 6,000: sqrt(0.99753 *
    906.79) = 30.08."""
    assert lr_edge.predicted_top_inflation(200) == pytest.approx(12.82, abs=0.01)
    assert lr_edge.predicted_top_inflation(1000) == pytest.approx(23.94, abs=0.01)
    assert lr_edge.predicted_top_inflation(6000) == pytest.approx(30.08, abs=0.01)


def test_a_long_run_beside_the_grid_is_traced_not_edged(tmp_path):
    """A cell at one LR (the horizon pair) adds its trace and the mechanism's prediction; it
    gets no edge, rate or sensitivity of its own."""
    study = write_lr_study(tmp_path)
    cell = artifacts.CellKey("smollm2-135m", "quotes", "paged_adamw_8bit", "horizon-lr0.0002")
    path = write_run(tmp_path, "edge", cell, 1, ppl=25.0, summary={"optimizer": {"requested": {"lr": 2e-4}}})
    curve_files.write_optimizer_trace(path, _trace([1.0, 3.0, 9.0], 1, True), TRACE_COLUMNS)
    e = lr_edge.compute_edge(load_study(study), AnalysisConfig())
    horizon_arm = f"{ARM_8}__horizon"
    assert horizon_arm not in set(e.edges["arm"]) | set(e.rates["arm"]) | set(e.sensitivity["arm"])
    [row] = e.horizon.to_dict("records")
    assert row["arm"] == horizon_arm and row["last_step"] == 3 and row["inflation_last"] == 9.0
    assert row["inflation_at_200"] == 9.0 and row["top_code_last"] == 0.1
    assert row["predicted_at_6000"] == pytest.approx(30.08, abs=0.01)
    assert (row["perplexity_median"], row["blowups"], row["judged"]) == (25.0, 0, 1)
    md = render_markdown(report.build(load_study(study))[0])
    assert "in the long runs: `8-bit · horizon` 0/1 over 3 steps. Not covered by these runs: the fused CUDA" in md
    assert ("`8-bit · horizon` (LR 2e-4, 1 trial(s)) 9 at step 200 and 9 at step 3 (top-code share "
            "0.1); held-out perplexity 25, 0/1 blew up") in md
    assert "The paper's LR 2e-4 (Alahmari et al. 2024" in md
