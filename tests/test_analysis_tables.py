"""Paper-shaped tables: Table 1/2 reproduce the paper's numbers (analysis.compute.tables); files written as
promised (analysis.present.formatting)."""

from __future__ import annotations

import pandas as pd
import pytest
from analysis_fixtures import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    SMOL_8,
    SMOL_32,
    write_mixed_study,
    write_paper_study,
    write_run,
)

from analysis.compute import tables
from analysis.load import load_study
from analysis.present import formatting


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    return load_study(write_paper_study(tmp_path_factory.mktemp("results")))


@pytest.mark.parametrize("dataset,expected", [("quotes", PAPER_TABLE1),
                                              ("platypus", PAPER_TABLE2)])
def test_perplexity_table_reproduces_the_paper(paper, dataset, expected):
    table = tables.perplexity_table(paper.runs, dataset)
    assert list(table.index) == list(range(1, 8)) and table.index.name == "Run #"
    assert set(table.columns) == set(expected)
    for key, values in expected.items():
        assert list(table[key]) == values
    # the paper's column order: per model, the 8-bit arm first
    assert [optim for _, optim in table.columns][:2] == ["paged_adamw_8bit", "paged_adamw_32bit"]


def test_failed_runs_have_no_value_in_table1(tmp_path):
    study = load_study(write_mixed_study(tmp_path))
    table = tables.perplexity_table(study.runs, "quotes")
    thirty_two = table[("smollm2-135m", "paged_adamw_32bit")]
    assert list(thirty_two.loc[[1, 2, 3]]) == [18.0, 19.0, 20.5]
    assert thirty_two.loc[[4, 5, 6]].isna().all()  # failed, half-finished, unreadable
    assert table.loc[4, ("smollm2-135m", "paged_adamw_8bit")] == float("inf")  # diverged


def test_memory_table_prefers_gpu_allocation(tmp_path):
    for trial, pct in ((1, 17.0), (2, 17.2)):
        write_run(tmp_path, "s", SMOL_8, trial, summary={"memory": {"max_allocated_pct": pct}})
        write_run(tmp_path, "s", SMOL_32, trial, summary={"memory": {"max_allocated_pct": 18.0}})
    table, label = tables.memory_table(load_study(tmp_path / "s").runs)
    assert label == "GPU memory allocated (% of device)"
    assert list(table.columns) == ["paged_adamw_8bit", "paged_adamw_32bit"]
    assert table.loc[("smollm2-135m", "quotes"), "paged_adamw_8bit"] == pytest.approx(17.1)


def test_memory_table_on_cpu_runs_says_so(paper):
    table, label = tables.memory_table(paper.runs)
    assert label.startswith("CPU peak RSS")
    assert table.loc[("llama2-7b-hf", "quotes"), "paged_adamw_32bit"] == pytest.approx(1504.0)


def test_timing_table_shape(paper):
    table = tables.timing_table(paper.runs, "quotes")
    assert table.columns[0] == ("paged_adamw_8bit", "gpt-neox-20b", "Train (s)")
    assert table.columns[1] == ("paged_adamw_8bit", "gpt-neox-20b", "Test (s)")
    assert table.shape == (7, 8)
    assert table.loc[3, ("paged_adamw_32bit", "llama2-7b-hf", "Train (s)")] == 103.0
    assert table.loc[3, ("paged_adamw_32bit", "llama2-7b-hf", "Test (s)")] == pytest.approx(10.3)


@pytest.mark.parametrize("value,text", [(3.567, "3.567"), (233812.79, "233813"), (21024.0, "21024"),
                                        (0.000582750582, "0.00058275"), (7, "7"),
                                        (float("nan"), "–"), (None, "–"), (float("inf"), "inf"),
                                        (3.2e12, "3.2000e+12"), ("x|y", "x|y"), (True, "True")])
def test_format_number(value, text):
    assert formatting.format_number(value) == text


def test_write_table_writes_csv_markdown_latex(paper, tmp_path):
    table = tables.perplexity_table(paper.runs, "quotes")
    paths = formatting.write_table(table, tmp_path / "t", "table1", caption="Perplexity")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "table1.csv", "table1.md", "table1.tex"]
    back = pd.read_csv(paths["csv"], header=[0, 1], index_col=0)
    assert list(back[("llama2-7b-hf", "paged_adamw_8bit")]) == PAPER_TABLE1[
        ("llama2-7b-hf", "paged_adamw_8bit")]  # CSV keeps full precision
    md = paths["md"].read_text()
    assert md.startswith("Perplexity\n\n| Run #")
    assert "| llama2-7b-hf / paged_adamw_8bit " in md and "233813" in md
    tex = paths["tex"].read_text()
    assert "\\begin{tabular}" in tex and "\\caption{Perplexity}" in tex and "12.471" in tex


def test_markdown_cells_stay_on_one_line():
    md = formatting.to_markdown(pd.DataFrame({"a": ["two\nlines | pipe"]}), index=False)
    assert md.splitlines()[2] == "| two ⏎ lines \\| pipe |"


def test_latex_captions_are_escaped(tmp_path):
    paths = formatting.write_table(pd.DataFrame({"a": [1.5]}), tmp_path, "t",
                               caption="X = a__b, `c_d`, 5%")
    assert "\\caption{X = a\\_\\_b, \\texttt{c\\_d}, 5\\%}" in paths["tex"].read_text()


def test_a_column_keeps_one_format():
    table = pd.DataFrame({"sensitivity": [0.358, 0.49394, 0.35651, float("nan")], "count": [7.0, 3.0, None, 0.0],
                          "ppl": [52.6917, 233812.79, 3.5, 51.52], "arm": ["a", "b", "c", "d"]})
    shown = formatting.format_frame(table)
    assert list(shown["sensitivity"]) == ["0.35800", "0.49394", "0.35651", "–"]
    assert list(shown["count"]) == ["7", "3", "–", "0"]
    assert list(shown["ppl"]) == ["52.692", "233813", "3.5000", "51.520"]
    assert list(shown["arm"]) == ["a", "b", "c", "d"]
    md = formatting.to_markdown(table, index=False)
    assert "| 0.35800 " in md and "| 0.49394 " in md


def test_an_interval_keeps_one_format():
    assert formatting.format_interval(1.01, 1.0159) == "[1.0100, 1.0159]"
    assert formatting.format_interval(0.0, 0.708) == "[0, 0.70800]"
    assert formatting.format_interval(3, 7) == "[3, 7]"
