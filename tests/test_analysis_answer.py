"""The report answers first: short arm labels, the Answer block's numbers, the appendix, the
contents, long tables and CSV links (analysis.present.labels, analysis.present.sections_answer,
analysis.present.document)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import SMOL_8, SMOL_32, write_default_like_study, write_mixed_study, write_paper_study
from scipy import stats as sps

from analysis import report
from analysis.load import load_study
from analysis.present import labels, sections_answer
from analysis.present.document import SHOWN_ROWS, Doc, anchor, render_html, render_markdown


def test_short_labels_keep_only_what_differs():
    cells = ["smollm2-135m__quotes__paged_adamw_8bit__lr0.001",
             "smollm2-135m__quotes__paged_adamw_8bit-maps_bnb_0.41.0__lr0.001",
             "smollm2-135m__quotes__paged_adamw_32bit__horizon-lr0.0002"]
    assert labels.short_labels(cells) == {
        cells[0]: "8-bit · lr 1e-3", cells[1]: "8-bit · 0.41.0 maps · lr 1e-3",
        cells[2]: "32-bit · horizon · lr 2e-4"}
    assert labels.short_labels([SMOL_8.dirname, SMOL_32.dirname]) == {
        SMOL_8.dirname: "8-bit", SMOL_32.dirname: "32-bit"}
    assert labels.short_labels([SMOL_8.dirname]) == {SMOL_8.dirname: "8-bit"}  # the optimizer stays


@pytest.mark.parametrize("variant, words", [
    ("vary-data-order", "vary data_order"), ("vary-lora-init", "vary lora_init"),
    ("vary-nothing", "vary nothing"), ("quant-nf4", "quant nf4"),
    ("lora-all-neftune", "lora all · neftune"), ("horizon-lr0.0002", "horizon · lr 2e-4"),
    ("lr1e-05", "lr 1e-5"), ("fp16", "fp16"), ("", ""),
])
def test_a_variant_reads_key_then_value(variant, words):
    assert labels.variant_words(variant) == words


def test_short_labels_fall_back_when_words_collide():
    cells = ["m__d__adamw_8bit", "m__d__paged_adamw_8bit"]  # both "8-bit" in words
    assert labels.short_labels(cells) == {cells[0]: "adamw_8bit", cells[1]: "paged_adamw_8bit"}
    assert labels.optim_words("sgd_custom") == "sgd_custom"  # an unknown name stays as it is
    legend = labels.legend(labels.short_labels(cells))
    assert legend.to_dict("list") == {"label": ["adamw_8bit", "paged_adamw_8bit"], "cell": cells}


@pytest.fixture(scope="module")
def default_doc(tmp_path_factory):
    study = load_study(write_default_like_study(tmp_path_factory.mktemp("results")))
    doc, _ = report.build(study)
    return doc, render_markdown(doc)


def test_answer_opens_the_report_with_the_comparison_in_numbers(default_doc):
    _, md = default_doc
    assert md.split("\n\n")[2] == "## Answer"  # title, contents, then the answer
    answer = md.split("## Answer")[1].split("\n## ")[0]
    x = np.array([30.0 + t * 0.37 for t in range(1, 8)])  # the fixture's 8-bit perplexities
    y = np.array([30.0 + t * 0.35 for t in range(1, 8)])  # and 32-bit, seed-matched
    diff = np.log(x) - np.log(y)
    low, high = sps.ttest_rel(np.log(x), np.log(y)).confidence_interval(0.95)
    line = next(b for b in answer.split("\n") if b.startswith("- `8-bit` vs `32-bit`"))
    assert line.startswith("- `8-bit` vs `32-bit`, 7 paired trials: equivalent within ±1% (TOST p = ")
    d = max(3, -math.floor(math.log10(float(f"{math.exp(high) - math.exp(low):.1g}"))) + 1)
    assert (f"geometric-mean perplexity ratio {math.exp(diff.mean()):.{d}f} "
            f"(95% CI {math.exp(low):.{d}f}–{math.exp(high):.{d}f}) (first / second)") in line
    assert f"(max/min perplexity): {x.max() / x.min():.5g} vs {y.max() / y.min():.5g}" in line
    assert "Blow-ups: 0/7 = 0% [0%, 41%] vs 0/7 = 0% [0%, 41%]" in line
    assert "Adapters bitwise identical across trials: no / no; greedy generations identical: 1/2 / 1/2" in line
    assert "figures/answer.png" in answer and "| 8-bit   | smollm2-135m__quotes__paged_adamw_8bit" in answer


@pytest.mark.parametrize("ratio, low, high, text", [
    (0.7696, 0.7284, 0.8132, "0.770 (95% CI 0.728–0.813)"),  # explain-8bit: 0.41.0 maps vs today's
    (1.0002, 1.00015, 1.00025, "1.00020 (95% CI 1.00015–1.00025)"),  # default, was "1 (95% CI 1–1)"
    (0.99992, 0.99981, 1.00003, "0.99992 (95% CI 0.99981–1.00003)"),
])
def test_a_ratio_keeps_its_ci_bounds_apart(ratio, low, high, text):
    row = pd.Series({"ratio_gmean": ratio, "ratio_ci_low": low, "ratio_ci_high": high})
    assert sections_answer._ratio(row, 0.05) == f"geometric-mean perplexity ratio {text}"


def test_setup_and_provenance_come_last(default_doc):
    doc, md = default_doc
    assert md.index("## Appendix: setup and environment") > md.index("## Problems found while reading")
    assert md.index("Generated ") > md.index("## Appendix")
    kinds = [k for k, _ in doc.blocks]
    assert kinds.count("appendix") == 1
    header = md.split("*Setup per cell*")[1].split("\n")[2]  # columns: the short labels
    assert [c.strip() for c in header.split("|")[2:4]] == ["8-bit", "32-bit"]


def test_paper_answer_has_one_line_per_comparison(tmp_path):
    doc, _ = report.build(load_study(write_paper_study(tmp_path)))
    md = render_markdown(doc)
    answer = md.split("## Answer")[1].split("\n## ")[0]
    lines = [b for b in answer.split("\n") if b.startswith("- ")]
    assert len(lines) == 4 and all(" vs " in b and "7 paired trials" in b for b in lines)
    assert "`gpt-neox-20b · quotes · 8-bit` vs `gpt-neox-20b · quotes · 32-bit`" in lines[0]
    assert "Blow-ups: 7/7 = 100% [59%, 100%] vs 0/7 = 0% [0%, 41%]" in lines[0]


def test_document_contents_appendix_long_tables_and_csv_links():
    doc = Doc("T")
    doc.heading("Answer")
    doc.para("yes")
    doc.para("is under *Held-out perplexity*, `a*b` stays code, 2 * 3 * 4 stays")
    doc.heading("Big table: it's long")
    big = pd.DataFrame({"n": range(SHOWN_ROWS + 5)})
    doc.table(big, "all the rows")
    doc.appendix("Appendix: setup")
    doc.table(big.head(2), "small")
    doc.csv = {"all the rows": "tables/big.csv"}
    md, page = render_markdown(doc), render_html(doc)
    assert anchor("Big table: it's long") == "big-table-its-long"
    assert "Contents: [Answer](#answer) · [Big table: it's long](#big-table-its-long) · " \
           "[Appendix: setup](#appendix-setup)" in md
    assert "*all the rows* ([CSV](tables/big.csv))" in md and md.count("\n| ") >= SHOWN_ROWS + 5  # whole in MD
    assert "## Appendix: setup" in md
    assert '<section id="answer">\n<h2>Answer</h2>\n<p>yes</p>\n<p>is under <em>Held-out perplexity</em>, ' \
           '<code>a*b</code> stays code, 2 * 3 * 4 stays</p>\n</section>' in page
    assert '<h2 id="big-table-its-long">' in page and '<a href="#big-table-its-long">' in page
    assert f"<details><summary>all {SHOWN_ROWS + 5} rows</summary>" in page
    assert '<a href="tables/big.csv">CSV</a>' in page
    assert '<details class="appendix" id="appendix-setup"><summary><h2>Appendix: setup</h2></summary>' in page
    assert page.endswith("</table></details>\n</body></html>\n")  # the appendix closes the page


def test_a_study_without_its_adapter_weights_says_so(tmp_path):
    """A published study ships run records only: the distances say why they are missing."""
    from repeatability.records import adapter_files

    path = write_default_like_study(tmp_path)
    for weights in path.glob("*/trial-*/" + adapter_files.adapter_weights_path(Path(".")).as_posix()):
        weights.unlink()
    md = render_markdown(report.build(load_study(path))[0])
    assert "Adapter weights not kept: 14 finished run(s) recorded their adapter's SHA-256" in md
    assert "Adapters bitwise identical across trials: no / no" in md  # judged from the recorded SHA-256


def test_same_seeds_on_another_machine_beside_the_seed_spread(tmp_path):
    """--compare pairs the same trials (same cell, trial and seeds) of two studies: the
    reproducibility gap per trial beside the seed spread and the arm effect (issue 16's example:
    the default study on an EPYC and on a Xeon differ by ~1e-5 relative, with other adapter bits)."""
    import dataclasses

    from analysis_fixtures import write_run

    from analysis.present import sections_answer
    from analysis.report import compute

    here = load_study(write_default_like_study(tmp_path))
    for trial in range(1, 8):  # the same protocol "on another machine": 1e-5 higher, other bits
        for cell, step in ((SMOL_8, 0.37), (SMOL_32, 0.35)):
            losses = [3.0 - 0.1 * i + 0.001 * trial * i for i in range(10)]
            losses[3] += 1e-6  # the curves part at logged step 4 (steps are 1-based)
            write_run(tmp_path, "xeon", cell, trial, ppl=(30.0 + trial * step) * (1 + 1e-5 * trial / 7),
                      losses=losses if cell == SMOL_8 else losses[:9] + [2.05], weight_seed=100 + trial,
                      completions=[f"not protect you {trial % 3}", "busy"])
    r = compute(here, others=[load_study(tmp_path / "xeon")])
    cells = r.cross_cells.set_index("cell")
    assert cells["n_pairs"].tolist() == [7, 7]
    assert cells.loc[SMOL_8.dirname, "max_abs_rel_diff"] == pytest.approx(1e-5, rel=1e-6)
    assert cells.loc[SMOL_8.dirname, "median_abs_rel_diff"] == pytest.approx(4 / 7 * 1e-5, rel=1e-6)
    assert cells.loc[SMOL_8.dirname, "adapters_equal"] == "0/7"
    assert cells.loc[SMOL_8.dirname, "first_part_step"] == 4
    assert cells.loc[SMOL_8.dirname, "seed_spread"] == pytest.approx((30 + 7 * 0.37) / 30.37 - 1)
    x = np.log([30.0 + t * 0.37 for t in range(1, 8)])
    y = np.log([30.0 + t * 0.35 for t in range(1, 8)])
    assert cells.loc[SMOL_8.dirname, "arm_effect"] == pytest.approx(math.exp((x - y).mean()) - 1)
    [line] = [ln for ln in sections_answer.reproducibility_lines(r, {SMOL_8.dirname: "8-bit"}) if "`8-bit`" in ln]
    assert line.startswith("Same trials, same seeds in `xeon`: `8-bit`, 7 trials: perplexity differs by at "
                           "most 0.001% (median 0.00057%), against a spread between seeds of 7.3% and an "
                           f"arm effect of {(math.exp((x - y).mean()) - 1) * 100:.2g}%")
    assert line.endswith("adapters bitwise equal 0/7; training-loss curves first part at step 4.")
    same = r.cross_cells.assign(max_abs_rel_diff=0.0, median_abs_rel_diff=0.0, adapters_equal="7/7",
                                first_part_step=float("nan"))
    [line] = [ln for ln in sections_answer.reproducibility_lines(dataclasses.replace(r, cross_cells=same),
                                                                 {SMOL_8.dirname: "8-bit"}) if "`8-bit`" in ln]
    assert "7 trials: perplexity identical in every trial, against a spread between seeds of 7.3%" in line
    assert line.endswith("adapters bitwise equal 7/7; training-loss curves never part.")


def test_the_answer_warns_when_runs_came_from_different_locks(tmp_path):
    import dataclasses

    from analysis.compute.verdict import LockStatus
    from analysis.present import sections_answer
    from analysis.report import compute

    r = compute(load_study(write_default_like_study(tmp_path)))
    mixed = dataclasses.replace(r, lock=LockStatus(locks={"requirements/cpu.txt aaaa": 7,
                                                          "requirements/cpu.txt bbbb": 7},
                                                   unlocked=0, unrecorded=0))
    doc = Doc("T")
    sections_answer.answer(doc, mixed)
    warnings = [b for b in doc.blocks if b[0] == "para" and str(b[1]).startswith("WARNING")]
    assert warnings[0] == ("para", ("WARNING: the runs came from different locks: 7 run(s) from requirements/cpu.txt "
                                    "aaaa; 7 run(s) from requirements/cpu.txt bbbb (14 of 14 exactly locked). "
                                    "Differences between them may be the software's, not the seeds'."))


def test_the_answer_warns_when_runs_mix_commits_dirty_trees_or_fingerprints(tmp_path):
    """Two commits, one run on a dirty tree, and one cell whose trials recorded two fingerprints:
    the Answer names them; the appendix groups each cell's runs by fingerprint."""
    from analysis_fixtures import write_run

    from analysis.present import sections_answer
    from analysis.report import compute

    def numerics(hex_: str) -> dict:
        return {"numerics": {"canary_loss": float.fromhex(hex_), "canary_loss_hex": hex_, "canary_sequences": 8,
                             "canary_tokens": 100, "canary_ids_sha256": "0" * 64, "commit": None, "dirty": None}}

    for trial in (1, 2):
        write_run(tmp_path, "mix", SMOL_8, trial, ppl=30.0 + trial,
                  env={"git": {"commit": "a" * 40, "dirty": trial == 2}}, summary=numerics("0x1.9p+1"))
        write_run(tmp_path, "mix", SMOL_32, trial, ppl=30.5 + trial, env={"git": {"commit": "b" * 40, "dirty": False}},
                  summary=numerics("0x1.9p+1" if trial == 1 else "0x1.8p+1"))
    r = compute(load_study(tmp_path / "mix"))
    assert sections_answer.provenance_warning(r) == (
        "WARNING: the runs mix 2 commits (aaaaaaaaa: 2, bbbbbbbbb: 2 runs); 1 run(s) started on a dirty tree "
        "(`8-bit` t2); cells whose numerics fingerprints differ between trials: `32-bit` (2 fingerprints). The same "
        "seeds may give other numbers under another commit or an edited tree: compare runs within one commit and "
        "fingerprint (appendix).")
    _, tables = report.build(load_study(tmp_path / "mix"))
    fingerprints = tables["fingerprints"][0]
    assert fingerprints["runs"].tolist() == [1, 1, 2] and fingerprints["dirty_runs"].tolist() == [0, 0, 1]


def test_the_answer_warns_when_runs_mix_worker_layouts(tmp_path):
    """One commit, clean, one fingerprint, but 3 runs with 1 torch thread (two workers side by side)
    and 1 with 2: the thread count moved bits near the LR edge, so the Answer says so."""
    from analysis_fixtures import write_run

    from analysis.present import sections_answer
    from analysis.report import compute

    for arm, trial, threads in ((SMOL_8, 1, 1), (SMOL_8, 2, 2), (SMOL_32, 1, 1), (SMOL_32, 2, 1)):
        write_run(tmp_path, "lay", arm, trial, ppl=30.0 + trial, env={"git": {"commit": "a" * 40, "dirty": False}},
                  summary={"determinism": {"torch_num_threads": threads}})
    r = compute(load_study(tmp_path / "lay"))
    assert sections_answer.provenance_warning(r) == (
        "WARNING: the runs mix worker layouts: 3 run(s) with 1 torch thread, 1 run(s) with 2 torch threads. The "
        "same seeds may give other numbers under another commit, an edited tree or another thread count: compare "
        "runs within one commit and fingerprint (appendix).")


def test_an_arm_with_blowups_gets_no_perplexity_ratio(tmp_path):
    """8-bit trial 4 diverged (1/4 blow-ups): a ratio of means over blown-up and sane runs is no
    shift of either arm, so the answer line defers to the blow-up rates."""
    doc, _ = report.build(load_study(write_mixed_study(tmp_path)))
    answer = render_markdown(doc).split("## Answer")[1].split("\n## ")[0]
    line = next(b for b in answer.split("\n") if b.startswith("- `8-bit` vs `32-bit`"))
    assert ("no perplexity ratio: blow-ups in 1/4 vs 0/3 runs would drive it, the blow-up rates "
            "compare these arms. Spread") in line
    assert "geometric-mean" not in line and "(first / second)" not in line


def test_a_ratio_of_thousands_reads_in_significant_digits():
    row = pd.Series({"ratio_gmean": 7409.881, "ratio_ci_low": 2.066, "ratio_ci_high": 26575582.656})
    assert sections_answer._ratio(row, 0.05) == "geometric-mean perplexity ratio 7409.9 (95% CI 2.066–26575583)"
