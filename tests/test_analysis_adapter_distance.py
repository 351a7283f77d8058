"""Adapter distance on hand-made adapters with known distances, and read through the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from analysis_fixtures import write_run
from variance_fixtures import OFAT_CELLS, Q_KEY, V_KEY, lora_tensors, write_variance_sources_study

from analysis.compute import adapter_distance as dv
from analysis.load import load_study
from repeatability.records import artifacts


def rank1(theta_deg: float, scale: float = 1.0, dim: int = 4) -> dv.Adapter:
    """One module, ΔW = scale · e1 · (cos θ, sin θ, 0, …)."""
    b = np.zeros((dim, 1))
    b[0, 0] = 1.0
    a = np.zeros((1, dim))
    a[0, :2] = [math.cos(math.radians(theta_deg)), math.sin(math.radians(theta_deg))]
    return dv.Adapter({"m.layers.0.q_proj": (b, a)}, scale)


def whole(x: dv.Adapter, y: dv.Adapter) -> dict:
    frame = dv.compare(x, y).assign(cell="c", trial_i=1, trial_j=2)
    return dv.whole_adapter(frame).iloc[0].to_dict()


def test_relative_l2_of_exactly_one_half():
    # ΔW_j = (5/3)·ΔW_i: ||ΔW_i − ΔW_j|| = 2/3, mean norm = 4/3 → 0.5; same direction → cos 1
    got = whole(rank1(0, 1.0), rank1(0, 5 / 3))
    assert got["rel_l2"] == pytest.approx(0.5, abs=1e-12)
    assert got["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert got["norm_j"] == pytest.approx(5 / 3)


@pytest.mark.parametrize(("theta", "rel", "cos"), [(60, 1.0, 0.5), (90, math.sqrt(2), 0.0),
                                                   (180, 2.0, -1.0), (0, 0.0, 1.0)])
def test_rotated_updates(theta, rel, cos):
    got = whole(rank1(0), rank1(theta))
    assert got["rel_l2"] == pytest.approx(rel, abs=1e-12)
    assert got["cosine"] == pytest.approx(cos, abs=1e-12)


def test_against_explicit_products_on_random_non_square_factors():
    rng = np.random.default_rng(0)
    factors = [{k: (rng.standard_normal((12, 3)), rng.standard_normal((3, 7))) for k in "pq"}
               for _ in range(2)]
    x, y = dv.Adapter(factors[0], 2.0), dv.Adapter(factors[1], 0.5)
    got = dv.compare(x, y).set_index("module")
    for k in "pq":
        wx, wy = 2.0 * factors[0][k][0] @ factors[0][k][1], 0.5 * factors[1][k][0] @ factors[1][k][1]
        assert got.loc[k, "distance"] == pytest.approx(np.linalg.norm(wx - wy), rel=1e-12)
        assert got.loc[k, "inner"] == pytest.approx(float((wx * wy).sum()), rel=1e-12)
        assert got.loc[k, "norm_i"] == pytest.approx(np.linalg.norm(wx), rel=1e-12)


def test_a_tiny_difference_is_not_lost_to_cancellation():
    rng = np.random.default_rng(1)
    b, a = rng.standard_normal((64, 8)), rng.standard_normal((8, 32))
    eps = rng.standard_normal(a.shape) * 1e-11
    got = whole(dv.Adapter({"m": (b, a)}), dv.Adapter({"m": (b, a + eps)}))
    expected = np.linalg.norm(b @ eps) / np.linalg.norm(b @ a)
    assert expected < 1e-10
    assert got["rel_l2"] == pytest.approx(expected, rel=1e-6)


def test_peft_keys_are_paired_and_stray_keys_ignored():
    a, b = np.ones((2, 3)), np.ones((5, 2))
    tensors = {"base_model.model.x.layers.3.mlp.up_proj.lora_A.weight": a,
               "base_model.model.x.layers.3.mlp.up_proj.lora_B.weight": b,
               "base_model.model.x.layers.4.self_attn.o_proj.lora_A.weight": a,  # B missing
               "base_model.model.lm_head.weight": np.ones((2, 2))}
    factors = dv.lora_factors(tensors)
    assert list(factors) == ["base_model.model.x.layers.3.mlp.up_proj"]
    assert factors["base_model.model.x.layers.3.mlp.up_proj"][0].shape == (5, 2)  # (B, A)
    assert dv.module_kind("base_model.model.x.layers.3.mlp.up_proj") == (3, "up_proj")


def test_scaling_from_the_adapter_config():
    assert dv.adapter_scaling({"r": 8, "lora_alpha": 32}) == 4.0
    assert dv.adapter_scaling({"r": 16, "lora_alpha": 32, "use_rslora": True}) == 8.0
    assert dv.adapter_scaling({}) == 1.0


def test_adapters_read_through_the_contract(tmp_path):
    cell = OFAT_CELLS["vary-lora-init"]
    for trial, theta in enumerate((0, 60, 120), 1):
        write_run(tmp_path, "s", cell, trial, adapter=(lora_tensors(theta), {"r": 2, "lora_alpha": 4}))
    run = artifacts.run_dir(tmp_path, "s", cell, 1)
    adapter = dv.read_adapter(run)
    assert adapter.scale == 2.0 and set(adapter.factors) == {Q_KEY, V_KEY}
    study = load_study(tmp_path / "s")
    pairs = dv.pair_table(study.runs, study.path)
    assert len(pairs) == 3 * 2  # 3 trial pairs × 2 modules
    q = pairs[pairs["kind"] == "q_proj"].set_index(["trial_i", "trial_j"])
    assert q["distance"].to_dict() == pytest.approx({(1, 2): 2.0, (1, 3): 2 * math.sqrt(3),
                                                     (2, 3): 2.0})
    assert (pairs.loc[pairs["kind"] == "v_proj", "distance"] == 0).all()
    trials, d2, n2 = dv.distance_matrix(pairs, cell.dirname)
    assert trials == [1, 2, 3] and n2 == pytest.approx([8.0] * 3)
    assert d2 == pytest.approx(np.array([[0, 4, 12], [4, 0, 4], [12, 4, 0]]))


def test_cell_summary_and_layers_of_the_synthetic_study(tmp_path):
    study = load_study(write_variance_sources_study(tmp_path, crossed=False))
    pairs = dv.pair_table(study.runs, study.path)
    summary = dv.cell_summary(pairs).set_index("cell")
    lora = summary.loc[OFAT_CELLS["vary-lora-init"].dirname]
    # whole adapter = q_proj (rotating) + v_proj (fixed), each of norm 2
    assert lora["rel_l2_mean"] == pytest.approx((2 / math.sqrt(2) + math.sqrt(6) / 2) / 3)
    assert lora["cosine_mean"] == pytest.approx((0.75 + 0.75 + 0.25) / 3)
    assert (lora["n_pairs"], lora["n_identical_pairs"], lora["farthest_kind"]) == (3, 0, "q_proj")
    nothing = summary.loc[OFAT_CELLS["vary-nothing"].dirname]
    assert (nothing["n_identical_pairs"], nothing["rel_l2_max"], nothing["farthest_kind"]) == (3, 0, "–")
    layers = dv.by_layer(pairs).set_index(["cell", "layer"])
    assert layers.loc[(OFAT_CELLS["vary-lora-init"].dirname, 1), "rel_l2_max"] == 0
    assert layers.loc[(OFAT_CELLS["vary-lora-init"].dirname, 0), "rel_l2_max"] == pytest.approx(math.sqrt(3))


def test_seed_matched_arms_are_compared_trial_by_trial(tmp_path):
    study = load_study(write_variance_sources_study(tmp_path))
    x, y = (f"smollm2-135m__quotes__{o}__quant-nf4" for o in ("paged_adamw_8bit", "paged_adamw_32bit"))
    arms = dv.arm_pairs(study.runs, study.path, x, y, [1, 2])
    assert arms["trial_i"].tolist() == [1, 2]  # the fixture gives both arms of a trial one adapter
    assert arms["rel_l2"].tolist() == [0.0, 0.0] and arms["cosine"].tolist() == pytest.approx([1, 1])
    assert dv.arm_pairs(study.runs, study.path, x, y, [3]).empty
