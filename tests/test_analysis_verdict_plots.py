"""Per-cell verdicts (as categories, then in words), the "what could not run as asked" list, and the
figures' axes."""

from __future__ import annotations

import pytest
from analysis_fixtures import SMOL_8, SMOL_32, SMOL_FIXED, write_mixed_study, write_paper_study, write_run

from analysis.compute import verdict
from analysis.compute.curves import dispersion
from analysis.load import load_study
from analysis.present import plots, prose, sections_runs, verdict_words


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return load_study(write_mixed_study(tmp_path_factory.mktemp("results")))


def test_cell_verdicts(mixed):
    computed = verdict.cell_verdicts(mixed.runs, mixed.generations)
    assert list(computed.set_index("cell")["verdict"].loc[[SMOL_FIXED.dirname, SMOL_32.dirname, SMOL_8.dirname]]) == [
        verdict.Repeatability.BITWISE, verdict.Repeatability.SAME_GREEDY, verdict.Repeatability.SEEDS_VARY]
    table = verdict_words.cell_verdicts_in_words(computed).set_index("cell")
    fixed = table.loc[SMOL_FIXED.dirname]
    assert (fixed["n_distinct_adapters"], fixed["adapters_identical"]) == (1, True)
    assert fixed["verdict"] == "bitwise repeatable: every adapter is identical"
    assert fixed["seeds_varied"] == "none" and fixed["ppl_spread"] == 1.0
    same_text = table.loc[SMOL_32.dirname]  # 3 trials, different adapters, same greedy text
    assert same_text["greedy_identical"] and same_text["greedy_prompts_identical"] == "2/2"
    assert same_text["verdict"].startswith("weights differ (3 distinct adapters)")
    eight = table.loc[SMOL_8.dirname]  # trials 1-3 and the diverged 4 are finished
    assert (eight["n_finished"], eight["n_distinct_adapters"]) == (4, 4)
    assert eight["greedy_prompts_identical"] == "0/2"
    assert eight["ppl_spread"] == pytest.approx(40 / 20)
    assert eight["verdict"].startswith("trials differ, as their seeds do")


def test_same_seeds_but_different_results_is_called_not_repeatable(tmp_path):
    for trial in (1, 2):
        write_run(tmp_path, "s", SMOL_8, trial, ppl=10.0 + trial, completions=[str(trial)] * 2,
                  summary={"seeds": {"lora_init": 1, "data_order": 2, "dropout": 3,
                                     "generation": 4}})
    study = load_study(tmp_path / "s")
    table = verdict.cell_verdicts(study.runs, study.generations)
    assert table.iloc[0]["verdict"] == verdict.Repeatability.NOT_REPEATABLE
    row = verdict_words.cell_verdicts_in_words(table).iloc[0]
    assert row["verdict"].startswith("NOT repeatable under identical seeds: 2 distinct adapters, perplexity max/min")


def test_not_as_asked_lists_each_kind(mixed):
    issues = sections_runs.run_issues(mixed.runs)
    kinds = issues.groupby("issue")["trial"].apply(sorted).to_dict()
    assert kinds["failed"] == [4] and kinds["incomplete"] == [5] and kinds["diverged"] == [4]
    assert kinds["unreadable"] == [5, 6]
    assert len(issues[issues["issue"] == "paging not effective"]) == 3 + 4 + 4
    failed = issues[issues["issue"] == "failed"].iloc[0]
    assert failed["detail"] == "MemoryError: cannot allocate 2 GB"
    diverged = issues[issues["issue"] == "diverged"].iloc[0]
    assert diverged["detail"] == "loss is NaN at step 7 (last loss –)"


def test_partial_8bit_state_is_reported(tmp_path):
    write_run(tmp_path, "s", SMOL_8, 1, summary={"optimizer": {"effective": {
        "state_8bit_param_fraction": 0.75, "paging_effective": True}}})
    write_run(tmp_path, "s", SMOL_8, 2, summary={"optimizer": {"effective": {"bits": 32}}})
    issues = sections_runs.run_issues(load_study(tmp_path / "s").runs)
    assert list(issues["issue"]) == ["8-bit state partial", "paging not effective",
                                     "8-bit state not used"]
    assert issues.iloc[0]["detail"].startswith("75.0% of trainable parameters had 8-bit state")


def test_perplexity_figure_goes_log_when_spread_exceeds_10x(tmp_path):
    paper = load_study(write_paper_study(tmp_path))
    fig = plots.metric_by_cell(paper.runs)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    assert ax.get_ylabel().startswith("held-out perplexity (token-weighted)")
    assert len(ax.get_xticklabels()) == 8
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "complete", "median", "same trial & seeds"]
    narrow = paper.runs[paper.runs["optim"] == "paged_adamw_32bit"]
    assert plots.metric_by_cell(narrow).axes[0].get_yscale() == "linear"


def test_perplexity_figure_marks_hidden_non_finite_runs(mixed):
    assert plots.cell_order(mixed.runs) == [SMOL_8.dirname, SMOL_32.dirname, SMOL_FIXED.dirname]
    ax = plots.metric_by_cell(mixed.runs).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].endswith("+1 not finite, not shown")  # the diverged 8-bit trial (ppl inf)
    assert not labels[1].endswith("not shown")
    # the seed-matched arms are joined for trials 1-3 (trial 4: inf in one arm, failed in the
    # other); the fixed-seed variant is another comparison and is not joined
    joins = [line for line in ax.get_lines() if line.get_color() == "0.75"]
    assert [tuple(line.get_ydata()) for line in joins] == [(20.0, 18.0), (25.0, 19.0),
                                                            (40.0, 20.5)]


def test_loss_figures(mixed):
    fig = plots.loss_curves(mixed.curves)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and visible[0].get_title() == SMOL_32.dirname
    legend = [t.get_text() for t in visible[2].get_legend().get_texts()]
    assert legend == ["min–max across trials", "trial 1", "trial 2", "trial 3",
                      "trial 4 (diverged)"]
    band = visible[2].collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(900.0)  # the band reaches the diverged trial's peak
    assert visible[2].get_yscale() == "log"  # the diverged run reaches 900
    spread = plots.dispersion_figure(dispersion(mixed.curves, "train"), "train").axes[0]
    assert spread.get_xlabel() == "optimizer step" and "std of train loss" in spread.get_ylabel()


def test_wants_log():
    assert plots.wants_log([1.0, 11.0]) and not plots.wants_log([1.0, 10.0])
    assert not plots.wants_log([0.0, 100.0]) and not plots.wants_log([])


def test_environment_differences_inside_a_cell(mixed):
    diffs = verdict.environment_differences(mixed.runs)
    assert diffs.to_dict("records") == [{"cell": SMOL_32.dirname, "key": "packages.torch",
                                         "values (trials)": "2.12.0 (3); 2.13.0 (1,2,4,6)"}]


def test_comparison_reading_in_plain_words(tmp_path):
    from analysis.compute import stats

    paper = load_study(write_paper_study(tmp_path))
    row = stats.compare_all(paper.runs).iloc[1]  # llama2-7b-hf, 8-bit vs 32-bit
    text = prose.comparison_reading(row)
    assert text.startswith("`llama2-7b-hf__quotes__paged_adamw_8bit` (X) vs "
                           "`llama2-7b-hf__quotes__paged_adamw_32bit` (Y): median perplexity "
                           "109586 vs 3.561.")
    assert "X was higher in 7 of 7 trials (Wilcoxon signed-rank p = 0.016)" in text
    assert "P(X > Y) = 1.00" in text and "no p-value can be below" not in text
    assert "Brown-Forsythe on log perplexity p = 0.036: the spreads differ at α = 0.05." in text
    small = prose.comparison_reading(stats.compare_all(load_study(
        write_mixed_study(tmp_path / "m")).runs).iloc[0])
    assert "with 3 pairs no p-value can be below 0.25" in small
    assert "no evidence that the spreads differ" in small
