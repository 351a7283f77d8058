"""The report's new sections on a synthetic variance-sources study, and their absence where a
study lacks the data."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from analysis_fixtures import SMOL_8, write_default_like_study, write_run
from variance_fixtures import OFAT_CELLS, write_variance_sources_study

from analysis import report

NEW_HEADINGS = ("## Where does the variance come from?", "## Adapter distance",
                "## How many trials are needed", "## Ablations")


@pytest.fixture(scope="module")
def vs_report(tmp_path_factory):
    study = write_variance_sources_study(tmp_path_factory.mktemp("results"))
    out = study.parent / "out"
    return out, report.write_report(study, out).read_text()


def test_sections_in_order_with_their_figures(vs_report):
    out, text = vs_report
    positions = [text.index(h) for h in ("## Verdict per cell", "## Held-out perplexity",
                                          *NEW_HEADINGS[:2], "## Arm comparisons",
                                          NEW_HEADINGS[2], "## Generations", NEW_HEADINGS[3])]
    assert positions == sorted(positions)
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"variance_sources.png", "variance_anova.png", "adapter_distance_by_layer.png"} <= figures
    html = (out / "report.html").read_text()
    assert '<h2 id="where-does-the-variance-come-from">Where does the variance come from?</h2>' in html
    assert html.count('src="data:image/png;base64,') == len(figures)


def test_where_does_the_variance_come_from_answers_in_numbers(vs_report):
    out, text = vs_report
    section = text.split("## Where does the variance come from?")[1].split("## Adapter")[0]
    assert ("- `smollm2-135m__quotes__paged_adamw_8bit` on this machine (cpu / AMD EPYC): "
            "`lora_init` has the largest std (not significantly more than `data_order`: variance ratio "
            "F = 4 on (2, 2) df, one-sided p = 0.2): std of log perplexity 0.1 (95% CI 0.0521–0.628), i.e. "
            "perplexity varies by a factor of about 1.105 between trials; 78% of the variance"
            ) in section
    assert "Then `data_order` std 0.05 (19%), `dropout` std 0.02 (3%)." in section
    ofat = pd.read_csv(out / "tables" / "variance_ofat.csv")
    log_ppl = ofat[ofat["metric"] == "log perplexity"].set_index("source")
    assert log_ppl.loc["lora_init", "share"] == pytest.approx(0.01 / 0.0129)
    assert log_ppl.loc["none (floor)", "variance"] == 0
    anova = pd.read_csv(out / "tables" / "anova_1_log_perplexity.csv").set_index("term")
    assert anova.loc["variant", "sum_sq"] == pytest.approx(0.18)
    assert anova.loc["optim", "F"] == pytest.approx(75)
    assert "4 cells crossing optim: paged_adamw_32bit, paged_adamw_8bit; variant: quant-nf4, " \
           "quant-none; trials 1, 2, trial as a block" in section
    assert re.search(r"\| variant +\| 0\.18000 +\| 1 +\| 675\.00 ", section)  # one format per column


def test_adapter_distance_verdict_ablation_and_power_lines(vs_report):
    out, text = vs_report
    nothing, lora = OFAT_CELLS["vary-nothing"].dirname, OFAT_CELLS["vary-lora-init"].dirname
    assert (f"- `{nothing}`: adapters identical (3/3 same SHA-256), loss curves identical, greedy "
            "generations identical → bitwise repeatable") in text
    assert (f"- `{lora}`: 3 adapters, 3 pair(s) (0 identical): relative L2 0.88 (min 0.707, max "
            "1.22), cosine 0.5833 (min 0.25)") in text
    assert (f"- `{lora}` (3 run(s), temperature / top-p 0.1 / 0.1): K = 3 samples per prompt under "
            "3+ different seeds: identical to each other in 6/6 (run, prompt) pairs, identical to "
            "greedy in 6/6 → the generation seed changed nothing: sampling was greedy here.") in text
    assert ("(b) Base-model perplexity scored K = 3 times in each of 20 runs (1 distinct "
            "result(s): runs share the cached score): max − min = 0 in every run → verified, "
            "zero spread.") in text
    assert (f"- `{lora}` (std of log perplexity 0.1 over 3 trials): to detect, at α = 0.05 and "
            "power 0.8, 5% higher perplexity: ") in text
    assert "10% higher perplexity: 19 trials per arm" in text
    assert ("- `smollm2-135m__quotes__paged_adamw_8bit__quant-nf4 vs smollm2-135m__quotes__"
            "paged_adamw_32bit__quant-nf4`: relative L2 0 (min 0, max 0), cosine 1 over 2 "
            "trial(s)") in text
    needed = pd.read_csv(out / "tables" / "trials_needed.csv").set_index("cell")
    assert needed.loc[nothing, "n_1.05"] == 1
    pairs = pd.read_csv(out / "tables" / "adapter_distance_pairs.csv")
    assert len(pairs) == 4 * 3 + 4 * 1  # 4 OFAT cells × 3 pairs, 4 crossed cells × 1 pair


def test_default_like_study_gets_the_anova_but_no_ofat(tmp_path):
    study = write_default_like_study(tmp_path)
    text = report.write_report(study, tmp_path / "out").read_text()
    section = text.split("## Where does the variance come from?")[1].split("## Adapter")[0]
    assert "### One seed source at a time" not in section
    assert "2 cells crossing optim: paged_adamw_32bit, paged_adamw_8bit; trials 1, 2, 3, 4, 5, " \
           "6, 7, trial as a block" in section
    assert "No cell has two finished runs whose adapters hold lora_A/lora_B weight pairs" in text
    assert "## How many trials are needed" in text and "## Ablations" in text


def test_sections_absent_without_their_data(tmp_path):
    write_run(tmp_path, "one", SMOL_8, 1, completions=["a", "b"])
    text = report.write_report(tmp_path / "one", tmp_path / "out").read_text()
    for heading in ("## Where does the variance come from?", "## How many trials are needed"):
        assert heading not in text
    assert f"`{SMOL_8.dirname}`: 1 finished run(s): nothing to compare" in text
