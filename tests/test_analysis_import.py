"""Importing a published table as a study: round trip, bad input, honest reports, --compare."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from analysis_fixtures import PAPER_TABLE1, PAPER_TABLE2, SMOL_8, write_default_like_study, write_run
from scipy import stats as sps

from analysis import import_table, report
from analysis.compute import verdict
from analysis.load import load_study
from analysis.present import verdict_words
from analysis.present.sections import setup_table
from repeatability.records import integrity
from repeatability.records.errors import RunDirError

ROOT = Path(__file__).resolve().parents[1]
PAPER_CSV = ROOT / "experiments" / "paper_tables_1_2.csv"
# the fixtures' names for the paper's models → the harness's preset names
MODELS = {"llama2-7b-hf": "llama2-7b", "gpt-neox-20b": "gpt-neox-20b",
          "neoxt-chat-20b": "gpt-neoxt-chat-20b", "llama2-chat-7b": "llama2-7b-chat"}
BASES = {"llama2-7b": 7.04, "gpt-neox-20b": 14.35, "gpt-neoxt-chat-20b": 16.625,
         "llama2-7b-chat": 17.68}  # the paper's Section IX
HEADER = "model,dataset,optim,trial,perplexity\n"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    study = import_table.import_table(PAPER_CSV, "paper", results, source="Alahmari et al. 2024",
                                      citation="IEEE Access 12, doi:10.1109/ACCESS.2024.3470850")
    return load_study(study)


def test_shipped_csv_is_tables_1_and_2():
    rows = list(csv.DictReader(PAPER_CSV.open()))
    got: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        got.setdefault((row["model"], row["dataset"], row["optim"]), []).append(float(row["perplexity"]))
        assert float(row["base_perplexity"]) == BASES[row["model"]]
    expected = {(MODELS[m], ds, o): values for ds, table in (("english_quotes", PAPER_TABLE1),
                                                             ("open_platypus", PAPER_TABLE2))
                for (m, o), values in table.items()}
    assert got == expected and len(rows) == 56
    assert [int(r["trial"]) for r in rows[:7]] == list(range(1, 8))


def test_round_trip_keeps_every_number_and_invents_nothing(paper):
    runs = paper.runs
    assert len(runs) == 56 and set(runs["status"]) == {"complete"} and paper.problems == []
    for _, row in pd.read_csv(PAPER_CSV).iterrows():
        run = runs[(runs["model"] == row["model"]) & (runs["optim"] == row["optim"])
                   & (runs["trial"] == row["trial"])].iloc[0]
        assert run["metrics.perplexity_token_weighted"] == row["perplexity"]
        assert run["metrics.base_perplexity_token_weighted"] == row["base_perplexity"]
        assert float(run["imported.row.perplexity"]) == row["perplexity"]
    path = paper.path / "llama2-7b__english_quotes__paged_adamw_8bit" / "trial-01"
    assert sorted(p.name for p in path.iterdir()) == ["DONE", "summary.json"]
    summary = json.loads((path / "summary.json").read_text())
    assert sorted(summary) == ["cell", "headline", "imported", "metrics", "schema_version",
                               "status", "study", "trial"]
    assert summary["metrics"] == {"perplexity_token_weighted": 165687.93,
                                  "base_perplexity_token_weighted": 7.04}
    assert summary["imported"]["row"] == {
        "model": "llama2-7b", "dataset": "english_quotes", "optim": "paged_adamw_8bit",
        "trial": "1", "perplexity": "165687.93", "base_perplexity": "7.04",
        "notes": "Table 1 run 1; base perplexity from Section IX"}
    assert summary["imported"]["source"] == "Alahmari et al. 2024"
    assert (path / "DONE").read_text() == "complete\n"
    assert paper.curves.empty and paper.generations.empty


def test_report_tables_show_the_imported_numbers(paper):
    _, tabs = report.build(paper)
    table1 = tabs["table1_english_quotes_perplexity_token_weighted"][0]
    assert table1[("llama2-7b", "paged_adamw_8bit")].tolist() == \
        PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_8bit")]
    assert table1.columns.get_level_values("optimizer")[0] == "paged_adamw_8bit"  # 8-bit first
    rates = tabs["blowup_rates"][0].set_index("cell")
    # against the paper's own base perplexities × 10: 70.4, 143.5, 166.25, 176.8
    assert rates["blowups"].to_dict() == {
        "gpt-neox-20b__english_quotes__paged_adamw_32bit": 0,
        "gpt-neox-20b__english_quotes__paged_adamw_8bit": 7,
        "gpt-neoxt-chat-20b__open_platypus__paged_adamw_32bit": 0,
        "gpt-neoxt-chat-20b__open_platypus__paged_adamw_8bit": 7,
        "llama2-7b-chat__open_platypus__paged_adamw_32bit": 0,
        "llama2-7b-chat__open_platypus__paged_adamw_8bit": 4,
        "llama2-7b__english_quotes__paged_adamw_32bit": 0,
        "llama2-7b__english_quotes__paged_adamw_8bit": 4}
    pairs = tabs["blowup_equivalence"][0]
    assert set(pairs["design"]) == {"unpaired"}  # no seeds recorded: nothing to pair
    assert set(pairs["diff_test"]) == {"Welch t-test"}


def test_evidence_free_cells_get_the_unknown_verdict(paper):
    table = verdict.cell_verdicts(paper.runs, paper.generations)
    assert set(table["verdict"]) == {verdict.Repeatability.UNKNOWN}
    assert set(verdict_words.cell_verdicts_in_words(table)["verdict"]) == {"unknown (no adapters or seeds recorded)"}
    assert set(table["seeds_varied"]) == {"not recorded"}
    bitwise = verdict.bitwise_verdicts(paper.runs, paper.curves, paper.generations)
    assert bitwise["bitwise"].isna().all()
    lines = verdict_words.bitwise_in_words(bitwise)["line"]
    assert all(line.endswith(": unknown (no adapters or seeds recorded)") for line in lines)


def test_report_of_an_imported_study_says_not_recorded(paper, tmp_path):
    md = report.write_report(paper.path, tmp_path / "r")
    text = md.read_text()
    assert "56 of 56 runs were imported from published tables (Alahmari et al. 2024)" in text
    for line in ("Environment: not recorded by any finished run.", "No loss curve was recorded.",
                 "No generations were recorded.", "Times: not recorded by any run.",
                 "The held-out perplexity (mean of per-sequence): not recorded by any run.",
                 "optimizer state, paging and device not recorded",
                 "56 finished run(s) recorded no optimizer state (imported runs)",
                 "Base model before fine-tuning (token-weighted): 14.35; 16.625; 17.68; 7.04."):
        assert line in text, line
    for claim in ("NOT repeatable", "recorded the same environment", "did what was requested.",
                  "seeds vary", "bitwise repeatable"):
        assert claim not in text, claim
    assert "not seed-matched trial by trial (different or unrecorded seeds)" in text
    assert re.search(r"\| seed sources varied across trials +\| not recorded ", text)


def _run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        import_table.main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


BAD = {  # case: (header, rows, what the one line says)
    "missing_column": (HEADER.replace(",perplexity", ""), "llama2-7b,english_quotes,x,1\n",
                       ("missing column(s) perplexity; the header needs model, dataset, optim, "
                        "trial, perplexity")),
    "non_numeric": (HEADER, ("llama2-7b,english_quotes,paged_adamw_8bit,1,3.5\n"
                             "llama2-7b,english_quotes,paged_adamw_8bit,2,n/a\n"),
                    ":3: perplexity 'n/a' is not a number; write it as the source prints it"),
    "empty_perplexity": (HEADER, "llama2-7b,english_quotes,paged_adamw_8bit,1,\n",
                         (":2: perplexity is empty; a run the source does not report is left "
                          "out: remove the row")),
    "duplicate": (HEADER, ("llama2-7b,english_quotes,paged_adamw_8bit,1,3.5\n"
                           "llama2-7b,english_quotes,paged_adamw_32bit,1,3.4\n"
                           "llama2-7b,english_quotes,paged_adamw_8bit,1,3.6\n"),
                  (":4: cell llama2-7b__english_quotes__paged_adamw_8bit trial 1 is already on "
                   "line 2; keep one row per cell and trial")),
    "bad_trial": (HEADER, "llama2-7b,english_quotes,paged_adamw_8bit,first,3.5\n",
                  ":2: trial 'first' is not a positive integer"),
    "bad_name": (HEADER, "llama2__7b,english_quotes,paged_adamw_8bit,1,3.5\n",
                 ":2: cell name part 'llama2__7b' must be non-empty, without '/' or '__'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    header, body, message = BAD[case]
    table = tmp_path / "t.csv"
    table.write_text(header + body)
    code, out, err = _run_cli([str(table), "--study", "s", "--results-dir",
                               str(tmp_path / "results")], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "results").exists()


def test_existing_run_directory_is_never_overwritten(tmp_path, capsys):
    table, results = tmp_path / "t.csv", tmp_path / "results"
    table.write_text(HEADER + "llama2-7b,english_quotes,paged_adamw_8bit,1,3.5\n")
    assert import_table.main([str(table), "--study", "s", "--results-dir", str(results)]) == 0
    assert capsys.readouterr().out == f"{results / 's'}\n"
    before = _files(results)
    # the same cell/trial again, plus a new row: refused as a whole
    table.write_text(HEADER + "llama2-7b,english_quotes,paged_adamw_32bit,1,3.4\n"
                     "llama2-7b,english_quotes,paged_adamw_8bit,1,9.9\n")
    code, _, err = _run_cli([str(table), "--study", "s", "--results-dir", str(results)], capsys)
    run = results / "s" / "llama2-7b__english_quotes__paged_adamw_8bit" / "trial-01"
    assert code == 2 and err == (f"error: {run} already exists; nothing was written: import into "
                                 "a new --study, or delete those run directories first\n")
    assert _files(results) == before
    assert not (results / "s" / "llama2-7b__english_quotes__paged_adamw_32bit").exists()
    with pytest.raises(RunDirError, match="already exists; an imported run never replaces"):
        integrity.write_imported_run(run, {"status": "complete", "imported": {"source": "x"}})


def test_infinite_perplexity_is_a_diverged_run_and_optional_columns_land_in_the_summary(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("model,dataset,optim,trial,perplexity,gpu_memory_pct,variant,notes,page\n"
                     "m,d,paged_adamw_8bit,1,inf,41.5,v,overflowed,7\n"
                     "m,d,paged_adamw_8bit,2,12.5,,v,,7\n")
    study = load_study(import_table.import_table(table, "s", tmp_path / "results"))
    runs = study.runs.set_index("trial")
    assert runs.loc[1, "status"] == "diverged" and runs.loc[2, "status"] == "complete"
    assert runs.loc[1, "memory.max_allocated_pct"] == 41.5
    assert pd.isna(runs.loc[2, "memory.max_allocated_pct"])  # empty: not reported, absent
    assert runs.loc[1, "divergence.reason"] == "perplexity reported as infinite by the source"
    assert runs.loc[1, "imported.row.page"] == "7" and runs.loc[1, "imported.source"] == str(table)
    assert "imported.citation" not in runs.columns  # not given: absent
    assert set(runs["cell"]) == {"m__d__paged_adamw_8bit__v"}


def test_new_summary_keys_show_in_the_setup_table_only_when_recorded(tmp_path):
    extra = {"optimizer": {"state_maps": {"requested": "bnb_0.41.0", "name": "bnb_0.41.0",
                                          "maps": {}}},
             "precision": {"compute_dtype": "float32", "mixed_precision": "fp16",
                           "grad_scaler": True, "scaler_skipped_steps": 3,
                           "final_loss_scale": 1024.0}}
    write_run(tmp_path, "s", SMOL_8, 1, summary=extra)
    runs = load_study(tmp_path / "s").runs
    setup = setup_table(runs)[SMOL_8.dirname]
    assert setup["8-bit state maps requested / in force"] == "bnb_0.41.0 / bnb_0.41.0"
    assert setup["precision: compute / mixed / grad scaler"] == "float32 / fp16 / True"
    assert setup["grad scaler: skipped steps / final loss scale"] == "3 / 1024"
    plain = setup_table(load_study(write_default_like_study(tmp_path, "d", schema1=True)).runs)
    assert "8-bit state maps requested / in force" not in plain.index
    assert "imported from" not in plain.index


def _cp(k: int, n: int) -> tuple[float, float]:
    return (0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1),
            1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k))


def test_compare_puts_the_paper_next_to_our_runs(paper, tmp_path, capsys):
    ours = write_default_like_study(tmp_path, "ours")
    out = tmp_path / "r"
    assert report.main([str(paper.path), "--compare", str(ours), "--out", str(out)]) == 0
    cells = pd.read_csv(out / "tables" / "compare_cells.csv")
    assert len(cells) == 10 and cells["study"].tolist() == ["paper"] * 8 + ["ours"] * 2
    llama = cells[cells["cell"] == "llama2-7b__english_quotes__paged_adamw_8bit"].iloc[0]
    values = PAPER_TABLE1[("llama2-7b-hf", "paged_adamw_8bit")]
    assert (llama["n"], llama["median"], llama["min"], llama["max"]) == \
        (7, sorted(values)[3], min(values), max(values))
    assert (llama["blowups"], llama["ci_low"], llama["ci_high"]) == pytest.approx((4, *_cp(4, 7)))
    assert llama["source"] == "imported: Alahmari et al. 2024"
    smol = cells[cells["cell"] == SMOL_8.dirname].iloc[0]
    assert (smol["source"], smol["n"], smol["blowups"]) == ("run by this harness", 7, 0)
    assert smol["median"] == pytest.approx(30 + 4 * 0.37)
    pooled = pd.read_csv(out / "tables" / "compare_pooled_rates.csv", index_col=0)
    assert pooled.loc["paged_adamw_8bit", "paper"] == "22/28 = 79% [59%, 92%]"
    assert pooled.loc["paged_adamw_32bit", "ours"] == "0/7 = 0% [0%, 41%]"
    assert [round(v, 2) for v in _cp(22, 28)] == [0.59, 0.92]
    text = (out / "report.md").read_text()
    assert "## Side by side with other studies" in text
    assert math.isfinite(llama["reference"]) and llama["reference"] == 7.04
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        report.main([str(paper.path), "--compare", str(tmp_path / "missing"), "--out", str(out)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: no such study directory\n"
