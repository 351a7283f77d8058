"""The report in layers: compute once (analysis.compute.results), then present. The adapter pair table is
computed once per report, and the tables the report writes hold the numbers compute returned."""

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

# report table → the Results field it must hold, as written (full precision CSV)
WRITTEN_AS = {"adapter_distance_pairs": "adapter_whole", "adapter_distance_cells": "adapter_cells",
              "adapter_distance_layers": "adapter_layers", "adapter_distance_kinds": "adapter_kinds",
              "adapter_distance_arms": "adapter_arms", "variance_ofat": "ofat",
              "blowup_rates": "blowup_rates", "blowup_equivalence": "equivalence",
              "trials_needed": "trials_needed", "comparisons": "comparisons",
              "loss_within_cell": "parting", "verdicts": "verdicts"}


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
    """The variance-sources study's report, built with pair_table, arm_rates and compute counted."""
    study = write_variance_sources_study(tmp_path_factory.mktemp("results"))
    counted = {"pair_table": Counted(adapter_distance.pair_table),
               "arm_rates": Counted(blowups.arm_rates), "compute": Counted(results.compute)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapter_distance, "pair_table", counted["pair_table"])
        mp.setattr(blowups, "arm_rates", counted["arm_rates"])
        mp.setattr(report, "compute", counted["compute"])
        md = report.write_report(study, study.parent / "out")
    return md.parent, counted


def test_each_costly_number_is_computed_once_per_report(counted_report):
    _, counted = counted_report
    assert counted["compute"].calls == 1
    assert counted["pair_table"].calls == 1  # read by the variance and the adapter-distance sections
    assert counted["arm_rates"].calls == 1  # blow-ups, equivalence and the side-by-side cells
    assert len(counted["compute"].last.adapter_whole) == 4 * 3 + 4 * 1  # OFAT + crossed pairs
    assert counted["pair_table"].last is counted["compute"].last.adapter_pairs


@pytest.mark.parametrize("table", sorted(WRITTEN_AS))
def test_the_report_tables_hold_the_numbers_compute_returned(counted_report, table):
    out, counted = counted_report
    ours = getattr(counted["compute"].last, WRITTEN_AS[table]).reset_index(drop=True)
    written = pd.read_csv(out / "tables" / f"{table}.csv")
    assert list(written.columns) == list(ours.columns) and len(written) == len(ours) > 0
    numbers = ours.select_dtypes("number").columns
    assert len(numbers) > 0
    np.testing.assert_allclose(written[numbers].to_numpy(float), ours[numbers].to_numpy(float),
                               rtol=1e-12, atol=0, equal_nan=True)


def test_compute_alone_gives_the_known_answers(counted_report):
    out, _ = counted_report
    computed = results.compute(load_study(out.parent / "variance-sources"))
    assert dataclasses.is_dataclass(computed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        computed.ofat = pd.DataFrame()
    lora, nothing = OFAT_CELLS["vary-lora-init"].dirname, OFAT_CELLS["vary-nothing"].dirname
    cells = computed.adapter_cells.set_index("cell")
    assert cells.loc[lora, "rel_l2_mean"] == pytest.approx(0.88, abs=5e-3)
    assert cells.loc[lora, "farthest_kind"] == "q_proj" and cells.loc[nothing, "farthest_kind"] == "–"
    log_ppl = computed.ofat[computed.ofat["metric"] == "log perplexity"].set_index("source")
    assert log_ppl.loc["lora_init", "share"] == pytest.approx(0.01 / 0.0129)
    stats = computed.cell_stats[PRIMARY_METRIC].set_index("cell")
    assert stats.loc[nothing, "std"] == 0 and stats.loc[nothing, "n"] == 3
    assert computed.trials_needed.set_index("cell").loc[nothing, "n_1.05"] == 1
    written = pd.read_csv(out / "tables" / "cell_stats_token_weighted.csv").set_index("cell")
    assert written.loc[lora, "gmean"] == pytest.approx(stats.loc[lora, "gmean"], rel=1e-12)
