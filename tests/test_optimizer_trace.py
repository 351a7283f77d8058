"""The optimizer trace (repeatability/trial/optimtrace.py): a 32-bit shadow of AdamW fed the real
optimizer's gradients, never applied; its rows per step and module kind; on vs off gives the
same bits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from repeatability.records import artifacts, curve_files
from repeatability.trial import optimtrace, qmaps
from tests.conftest import run_cli, tiny_overrides

NAMES = ("model.layers.0.self_attn.q_proj.lora_A.default.weight",
         "model.layers.0.mlp.down_proj.lora_B.default.weight")


def test_module_kind_is_the_module_a_lora_matrix_belongs_to() -> None:
    assert optimtrace.module_kind(NAMES[0]) == "q_proj"
    assert optimtrace.module_kind(NAMES[1]) == "down_proj"
    assert (optimtrace.module_kind("gpt_neox.layers.3.attention.query_key_value.lora_A.default.weight")
            == "query_key_value")


def _params() -> list[tuple[str, torch.nn.Parameter]]:
    torch.manual_seed(0)
    return [(n, torch.nn.Parameter(torch.randn(8, 576) * 0.02)) for n in NAMES]  # 4608 >= min_8bit_size


def _traced_steps(optimizer_bits: int, maps: str = "current", steps: int = 30,
                  torch_adamw: bool = False, every: int = 1) -> optimtrace.OptimizerTrace:
    import bitsandbytes as bnb

    named = _params()
    params = [p for _, p in named]
    if torch_adamw:
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    else:
        opt = bnb.optim.AdamW(params, lr=1e-3, optim_bits=optimizer_bits, weight_decay=0.01)
        if maps != "current":
            qmaps.install_maps(opt, maps)
    trace = optimtrace.OptimizerTrace(named, every)
    trace.attach(opt)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        trace.global_step = step + 1
        for p in params:  # heavy-tailed gradients: a few large elements per block, as in training
            p.grad = torch.randn(p.shape, generator=gen) * torch.rand(p.shape, generator=gen).pow(8) * 0.1
        opt.step()
    return trace


def _overall(trace: optimtrace.OptimizerTrace, key: str) -> list[float]:
    return [r[key] for r in trace.rows if r["module_kind"] == optimtrace.ALL]


def test_rows_per_step_and_kind() -> None:
    trace = _traced_steps(8, steps=3)
    assert [(r["step"], r["module_kind"]) for r in trace.rows] == [
        (s, k) for s in (1, 2, 3) for k in ("down_proj", "q_proj", "all")]
    assert all(r["n_params"] == 4608 for r in trace.rows if r["module_kind"] != "all")
    assert all(r["n_8bit_params"] == r["n_params"] for r in trace.rows)


@pytest.mark.parametrize("torch_adamw", [False, True], ids=["bnb_32bit", "torch_adamw"])
def test_32bit_state_has_no_inflation(torch_adamw: bool) -> None:
    """32-bit AdamW is the shadow's own math: the inflation is 1 within fp32 rounding at every
    step (the applied update is a difference of fp32 parameters), the moments agree exactly."""
    trace = _traced_steps(32, torch_adamw=torch_adamw)
    inflation = _overall(trace, "update_inflation")
    assert len(inflation) == 30 and max(abs(x - 1) for x in inflation) < 1e-4
    assert max(abs(r["v_ratio_max"] - 1) for r in trace.rows) < 1e-5
    assert all(math.isnan(r["v_top_code_fraction"]) for r in trace.rows)


def test_0_41_0_maps_saturate_the_top_code_and_inflate_the_update() -> None:
    """The 0.41.0 unsigned map tops out at 0.0933: block maxima sit on its top code, the stored
    second moment falls below the exact one, and the update grows past exact Adam's."""
    trace = _traced_steps(8, maps="bnb_0.41.0")
    last = [r for r in trace.rows if r["module_kind"] == "all"][-1]
    assert last["v_top_code_fraction"] > 0.01
    assert last["v_ratio_median"] < 0.5
    inflation = _overall(trace, "update_inflation")
    assert inflation[0] == pytest.approx(1, abs=1e-3)  # the first step reads no stored moment yet
    assert inflation[-1] > 1.5


def test_todays_maps_keep_the_update_near_exact_adam() -> None:
    """Measured on these gradients (30 steps): today's maps deflate the update at the start (0.84
    at step 2: after the first step, elements far below their block's max are stored on the
    smallest codes, above their exact value) and settle within 1 - 0.003 of exact Adam by step 10
    (0.997-0.999), while the 0.41.0 maps reach 2.7 at step 30 on the same gradients."""
    trace = _traced_steps(8)
    inflation = _overall(trace, "update_inflation")
    assert 0.8 < min(inflation) and max(inflation) < 1.0 + 1e-6
    assert all(abs(x - 1) < 0.005 for x in inflation[9:])
    assert all(r["v_top_code_fraction"] > 0 for r in trace.rows)  # each block's max is on the top code


def test_state_dict_continues_the_trace_exactly() -> None:
    """A trace saved mid-run and loaded into a fresh one (as a resumed run does) continues with
    the same rows as an uninterrupted trace."""
    whole = _traced_steps(8, maps="bnb_0.41.0", steps=6)
    first = _traced_steps(8, maps="bnb_0.41.0", steps=3)
    resumed = optimtrace.OptimizerTrace(_params())
    resumed.load_state_dict(first.state_dict())
    assert resumed.t == 3 and resumed.rows == whole.rows[:9]
    for p, name in zip(resumed.by_name.values(), NAMES):
        assert torch.equal(resumed.v[p], first.v[first.by_name[name]])


def test_tracing_every_kth_step_gives_the_same_rows_at_those_steps() -> None:
    """optimizer_trace_every=k: rows at step 1 and every k-th step only, each equal to k=1's row at
    that step (the shadow's moments still take every gradient); the parameters move the same."""
    whole = _traced_steps(8, maps="bnb_0.41.0", steps=12)
    sparse = _traced_steps(8, maps="bnb_0.41.0", steps=12, every=5)
    assert sorted({r["optimizer_step"] for r in sparse.rows}) == [1, 5, 10]
    assert sparse.rows == [r for r in whole.rows if r["optimizer_step"] in (1, 5, 10)]
    assert sparse.t == whole.t == 12
    for p, name in zip(sparse.by_name.values(), NAMES):
        assert torch.equal(sparse.v[p], whole.v[whole.by_name[name]])
        assert torch.equal(p, whole.by_name[name])
    assert optimtrace.summarize(sparse.rows, 0.0, 5)["every"] == 5


def test_summary_of_the_rows() -> None:
    trace = _traced_steps(8, maps="bnb_0.41.0", steps=5)
    s = optimtrace.summarize(trace.rows, 1.5)
    assert s["steps"] == 5 and s["kinds"] == ["down_proj", "q_proj"] and s["seconds"] == 1.5
    assert s["update_inflation_last"] == _overall(trace, "update_inflation")[-1]
    assert s["update_inflation_max"] == max(_overall(trace, "update_inflation"))


def _run(tmp: Path, model: Path, data: Path, study: str, *extra: str, steps: int = 6) -> Path:
    args = tiny_overrides(model, data, tmp, **{"train.max_steps": steps})
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "optim.state_maps=bnb_0.41.0", f"study={study}",
                    *extra, *args]) == 0
    return next((tmp / study).glob("*/trial-01"))


def test_trace_on_and_off_give_the_same_bits(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """Tracing reads the optimizer and never writes to it: same adapter SHA-256 and loss curve;
    the traced run has its CSV (every step, every module kind) and the summary's figures."""
    off = _run(tmp_path, tiny_model_dir, quotes_jsonl, "off")
    on = _run(tmp_path, tiny_model_dir, quotes_jsonl, "on", "diagnostics.optimizer_trace=true")
    s_off, s_on = (json.loads((r / artifacts.SUMMARY).read_text()) for r in (off, on))
    assert s_on["adapter"]["sha256"] == s_off["adapter"]["sha256"]
    untimed = [[{k: v for k, v in r.items() if k != "elapsed_s"} for r in curve_files.read_loss_curve(run)]
               for run in (off, on)]
    assert untimed[0] == untimed[1] and len(untimed[0]) > 6  # every loss, grad norm and LR, bit for bit
    assert "optimizer_trace" not in s_off and not (off / artifacts.OPTIMIZER_TRACE).exists()
    rows = curve_files.read_optimizer_trace(on)
    kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {r["module_kind"] for r in rows} == kinds | {"all"} and len(rows) == 6 * 8
    assert s_on["optimizer_trace"]["steps"] == 6 and set(s_on["optimizer_trace"]["kinds"]) == kinds
    assert s_on["optimizer_trace"]["v_top_code_fraction_last"] > 0
    assert artifacts.OPTIMIZER_TRACE in json.loads((on / artifacts.MANIFEST).read_text())["files"]


def test_steps_the_grad_scaler_skips_are_not_traced(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """fp16 with a grad scaler: the first steps overflow the initial scale and are skipped; the
    optimizer never sees them, and neither does the trace."""
    run = _run(tmp_path, tiny_model_dir, quotes_jsonl, "fp16", "diagnostics.optimizer_trace=true",
               "quant.compute_dtype=float16", steps=8)
    s = json.loads((run / artifacts.SUMMARY).read_text())
    skipped = s["precision"]["scaler_skipped_steps"]
    traced = [r for r in curve_files.read_optimizer_trace(run) if r["module_kind"] == "all"]
    assert len(traced) == 8 - skipped == s["optimizer_trace"]["steps"]
    assert [r["optimizer_step"] for r in traced] == list(range(1, len(traced) + 1))
    assert not {r["step"] for r in traced} & set(s["precision"]["scaler_skipped_at"])
