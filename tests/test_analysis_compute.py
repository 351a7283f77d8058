"""The report in layers: the core numbers once (analysis.compute.results), each section's own numbers
once (analysis.present.section.Section), then present. The adapter pair table is computed once per
report, the tables the report writes hold the numbers compute returned, and a new section plugs in
with its own module and one entry in the list."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from variance_fixtures import OFAT_CELLS, write_variance_sources_study

from analysis import report
from analysis.compute import adapter_distance, blowups, results
from analysis.compute.stats import PRIMARY_METRIC
from analysis.load import load_study
from analysis.present.document import Doc
from analysis.present.section import Section, Tables
from analysis.present.sections_variance import ADAPTERS, SOURCES, TRIALS_NEEDED

# report table → where its numbers are, as written (full precision CSV): (section name or None for
# the core Results, attribute of the section's numbers or None for the numbers themselves)
WRITTEN_AS = {"adapter_distance_pairs": ("adapter_distance", "whole"),
              "adapter_distance_cells": ("adapter_distance", "cells"),
              "adapter_distance_layers": ("adapter_distance", "layers"),
              "adapter_distance_kinds": ("adapter_distance", "kinds"),
              "adapter_distance_arms": ("adapter_distance", "arms"), "variance_ofat": ("variance_sources", "ofat"),
              "blowup_rates": (None, "blowup_rates"), "blowup_equivalence": (None, "equivalence"),
              "trials_needed": ("trials_needed", None), "comparisons": (None, "comparisons"),
              "loss_within_cell": ("loss", "parting"), "verdicts": (None, "verdicts")}

# the words the present layer writes beside the numbers (analysis.present.verdict_words): a column in
# place of a typed one, or one more
RENAMED = {"blowup_rates": {"clusters": "bimodality"}}
ADDED = {"blowup_equivalence": ["verdict"]}


def _held(r: results.Results, where: tuple[str | None, str | None]) -> pd.DataFrame:
    section, attribute = where
    numbers = r.sections[section] if section else r
    return getattr(numbers, attribute) if attribute else numbers


class Counted:
    """A function that counts its calls (and keeps what the last one returned)."""

    def __init__(self, func):
        self.func, self.calls, self.last = func, 0, None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.last = self.func(*args, **kwargs)
        return self.last


@pytest.fixture(scope="module")
def counted_report(tmp_path_factory):
    """The variance-sources study's report, built with pair_table, arm_rates, the core compute and
    the report's compute counted."""
    study = write_variance_sources_study(tmp_path_factory.mktemp("results"))
    counted = {"pair_table": Counted(adapter_distance.pair_table),
               "arm_rates": Counted(blowups.arm_rates), "core": Counted(results.compute),
               "compute": Counted(report.compute)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapter_distance, "pair_table", counted["pair_table"])
        mp.setattr(blowups, "arm_rates", counted["arm_rates"])
        mp.setattr(results, "compute", counted["core"])
        mp.setattr(report, "compute", counted["compute"])
        md = report.write_report(study, study.parent / "out")
    return md.parent, counted


def test_each_costly_number_is_computed_once_per_report(counted_report):
    _, counted = counted_report
    assert counted["compute"].calls == counted["core"].calls == 1
    assert counted["pair_table"].calls == 1  # read by the variance and the adapter-distance sections
    assert counted["arm_rates"].calls == 1  # blow-ups, equivalence and the side-by-side cells
    r = counted["compute"].last
    assert len(ADAPTERS.of(r).whole) == 4 * 3 + 4 * 1  # OFAT + crossed pairs
    assert counted["pair_table"].last is r.adapter_pairs


def test_each_section_computes_once_under_its_own_name(counted_report):
    _, counted = counted_report
    names = [s.name for s in report.SECTIONS]
    assert len(set(names)) == len(names)
    assert set(counted["compute"].last.sections) == {s.name for s in report.SECTIONS if s.compute}


@pytest.mark.parametrize("table", sorted(WRITTEN_AS))
def test_the_report_tables_hold_the_numbers_compute_returned(counted_report, table):
    out, counted = counted_report
    ours = _held(counted["compute"].last, WRITTEN_AS[table]).reset_index(drop=True)
    written = pd.read_csv(out / "tables" / f"{table}.csv")
    shown = [RENAMED.get(table, {}).get(c, c) for c in ours.columns] + ADDED.get(table, [])
    assert list(written.columns) == shown and len(written) == len(ours) > 0
    numbers = ours.select_dtypes("number").columns
    assert len(numbers) > 0
    np.testing.assert_allclose(written[numbers].to_numpy(float), ours[numbers].to_numpy(float),
                               rtol=1e-12, atol=0, equal_nan=True)


def test_compute_alone_gives_the_known_answers(counted_report):
    out, _ = counted_report
    computed = report.compute(load_study(out.parent / "variance-sources"))
    assert dataclasses.is_dataclass(computed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        computed.verdicts = pd.DataFrame()
    lora, nothing = OFAT_CELLS["vary-lora-init"].dirname, OFAT_CELLS["vary-nothing"].dirname
    cells = ADAPTERS.of(computed).cells.set_index("cell")
    assert cells.loc[lora, "rel_l2_mean"] == pytest.approx(0.88, abs=5e-3)
    assert cells.loc[lora, "farthest_kind"] == "q_proj" and cells.loc[nothing, "farthest_kind"] == "–"
    ofat = SOURCES.of(computed).ofat
    log_ppl = ofat[ofat["metric"] == "log perplexity"].set_index("source")
    assert log_ppl.loc["lora_init", "share"] == pytest.approx(0.01 / 0.0129)
    stats = computed.cell_stats[PRIMARY_METRIC].set_index("cell")
    assert stats.loc[nothing, "std"] == 0 and stats.loc[nothing, "n"] == 3
    assert TRIALS_NEEDED.of(computed).set_index("cell").loc[nothing, "n_1.05"] == 1
    written = pd.read_csv(out / "tables" / "cell_stats_token_weighted.csv").set_index("cell")
    assert written.loc[lora, "gmean"] == pytest.approx(stats.loc[lora, "gmean"], rel=1e-12)


def test_the_core_alone_has_no_section_numbers(counted_report):
    out, _ = counted_report
    core = results.compute(load_study(out.parent / "variance-sources"))
    assert core.sections == {}
    with pytest.raises(KeyError, match="section 'variance_sources' was not computed"):
        SOURCES.of(core)


def _finished_per_cell(r: results.Results) -> pd.DataFrame:
    return r.study.runs.groupby("cell").size().rename("runs").reset_index()


def _present_finished(doc: Doc, table: pd.DataFrame, r: results.Results) -> Tables:
    doc.heading("Runs per cell")
    doc.table(table.set_index("cell"), "Runs per cell")
    return {"runs_per_cell": (table, "Runs per cell")}


def test_a_new_section_needs_its_module_and_one_entry_in_the_list(tmp_path, monkeypatch):
    """The walk of issue 28: a section declares what it computes and how it presents; appended to the
    list, the report computes it once, presents it and writes its table; nothing else changes."""
    study = write_variance_sources_study(tmp_path / "results")
    counted = Counted(_finished_per_cell)
    extra = Section("runs_per_cell", present=_present_finished, compute=counted)
    monkeypatch.setattr(report, "SECTIONS", (*report.SECTIONS, extra))
    md = report.write_report(study, tmp_path / "out")
    assert counted.calls == 1
    text = md.read_text()
    assert text.index("## Runs per cell") > text.index("## Problems found while reading the study")
    written = pd.read_csv(md.parent / "tables" / "runs_per_cell.csv")
    assert written["runs"].sum() == len(load_study(study).runs)
