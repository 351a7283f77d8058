"""Historical bitsandbytes 8-bit state maps (replica and read-back) and fp16 mixed precision
on CPU (fast tier)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repeatability.records import artifacts, curve_files
from repeatability.trial import qmaps
from tests.conftest import run_cli, tiny_overrides


def test_signed_map_is_unchanged_since_0_41_0() -> None:
    import bitsandbytes.functional as F

    old = qmaps.dynamic_map_bnb_0_41_0(signed=True)
    assert old.numel() == 256 and torch.equal(old, F.create_dynamic_map(signed=True).float())


def test_unsigned_map_of_0_41_0_has_524_values_and_the_kernel_reads_the_lowest_256() -> None:
    full = qmaps.dynamic_map_bnb_0_41_0(signed=False)
    assert full.numel() == 508 + 14 + 2  # 4 * (2**7 - 1) fraction values, 2 per exponent extra, 0 and 1
    assert torch.all(full[1:] >= full[:-1]) and float(full[-1]) == 1.0
    kernel = qmaps.historical_maps("bnb_0.41.0")["udynamic"]
    assert kernel.numel() == 256 and torch.equal(kernel, full[:256])
    assert float(kernel[0]) == 0.0 and kernel.unique().numel() == 256
    # the top code the kernel can store: 9.3% of the block's absmax (today's map reaches 1.0)
    assert float(kernel.max()) == pytest.approx(0.09332031, abs=1e-7)
    current = qmaps.historical_maps("current")["udynamic"]
    assert float(current.max()) == 1.0
    assert int((kernel > 0.01).sum()) == 121 and int((current > 0.01).sum()) == 193


def _bnb_adamw8(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    return bnb.optim.AdamW(params, lr=1e-3, optim_bits=8, min_8bit_size=4096)


@pytest.mark.parametrize("name", ["current", "bnb_0.41.0"])
def test_optimizer_state_holds_the_installed_maps(name: str) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 128))
    opt = _bnb_adamw8([w])
    qmaps.install_maps(opt, name)
    w.grad = torch.randn_like(w)
    opt.step()
    state = opt.state[w]
    expected = qmaps.historical_maps(name)
    assert torch.equal(state["qmap1"], expected["dynamic"]) and torch.equal(state["qmap2"], expected["udynamic"])
    read = qmaps.maps_in_force(opt, name)
    assert (read["name"] == name
            and read["maps"]["qmap2"]["sha256"] == qmaps.describe_map(expected["udynamic"])["sha256"])
    assert read["maps"]["qmap2"]["max"] == pytest.approx(float(expected["udynamic"].max()))


def test_old_maps_change_the_update_and_cap_the_second_moment() -> None:
    """Same gradients, two maps: the updates differ, and with the old map the largest second-moment
    values of a block saturate at the top code (9.33% of the absmax)."""
    results = {}
    for name in ("current", "bnb_0.41.0"):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(256 * 16))
        opt = _bnb_adamw8([w])
        qmaps.install_maps(opt, name)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            w.grad = torch.randn(w.shape, generator=gen)
            opt.step()
        st = opt.state[w]
        codes = st["state2"].long()
        results[name] = (w.detach().clone(), int(codes.max()), st)
    assert not torch.equal(results["current"][0], results["bnb_0.41.0"][0])
    assert results["bnb_0.41.0"][1] == 255  # the largest values saturate at the top code (0.0933)
    with pytest.raises(RuntimeError, match="before the optimizer's first step"):
        qmaps.install_maps(opt, "bnb_0.41.0")


def test_a_32bit_optimizer_reports_no_maps() -> None:
    import bitsandbytes as bnb

    w = torch.nn.Parameter(torch.randn(64, 128))
    opt = bnb.optim.AdamW([w], lr=1e-3, optim_bits=32)
    w.grad = torch.randn_like(w)
    opt.step()
    assert qmaps.maps_in_force(opt, "current")["name"] == "none (no 8-bit state)"


CELL = "tiny__tq__paged_adamw_8bit"


def test_run_records_old_maps_read_back_from_the_optimizer(tiny_model_dir: Path, quotes_jsonl: Path,
                                                           tmp_path: Path) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path)
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "optim.state_maps=bnb_0.41.0", "study=m", *args]) == 0
    # historical maps always make their own cell
    s = artifacts.read_summary(tmp_path / "m" / "tiny__tq__paged_adamw_8bit-maps_bnb_0.41.0" / "trial-01")
    maps = s["optimizer"]["state_maps"]
    assert maps["requested"] == "bnb_0.41.0" and maps["name"] == "bnb_0.41.0"
    assert maps["maps"]["qmap2"]["n"] == 256 and maps["maps"]["qmap2"]["max"] == pytest.approx(0.0933203, abs=1e-6)
    assert maps["maps"]["qmap1"]["min"] == pytest.approx(-0.99296874) and maps["maps"]["qmap1"]["max"] == 1.0
    assert "state maps bnb_0.41.0" in s["headline"]
    assert s["precision"] == {"compute_dtype": "float32", "mixed_precision": "no", "autocast": False,
                              "grad_scaler": False, "scaler_skipped_steps": 0, "scaler_skipped_at": [],
                              "final_loss_scale": None}


def test_fp16_runs_on_cpu_with_a_grad_scaler(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, **{"train.max_steps": 6})
    for study, extra in (("h", ["quant.compute_dtype=float16"]), ("f", [])):
        assert run_cli(["trial=1", "optim=paged_adamw_8bit", f"study={study}", *extra, *args]) == 0
    s = artifacts.read_summary(tmp_path / "h" / CELL / "trial-01")
    # same seeds: the first loss differs from the fp32 run's only by fp16 rounding (autocast ran)
    first = {st: curve_files.read_loss_curve(tmp_path / st / CELL / "trial-01")[0]["loss"] for st in ("h", "f")}
    assert first["h"] != first["f"] and first["h"] == pytest.approx(first["f"], rel=1e-2)
    p = s["precision"]
    assert p["compute_dtype"] == "float16" and p["mixed_precision"] == "fp16"
    assert p["autocast"] is True and p["grad_scaler"] is True
    # the scaler starts at 2**16 and halves on every skipped (overflowing) step
    assert p["final_loss_scale"] == 2.0 ** 16 / 2 ** p["scaler_skipped_steps"]
    assert p["scaler_skipped_steps"] == len(p["scaler_skipped_at"])
    assert s["status"] == "complete" and s["device"]["compute_dtype"] == "float16"
    assert "fp16 autocast with a grad scaler" in s["headline"]


def test_paper_cells_compose_with_fp16_and_three_arms() -> None:
    from repeatability.config.run import to_run_config
    from repeatability.launching import preflight
    from repeatability.trial import modelling

    for name in ("paper_llama2_7b_quotes", "paper_neox20b_quotes", "paper_llama2_chat_platypus",
                 "paper_neoxt_chat_platypus"):
        runs = [to_run_config(j) for j in preflight.compose_jobs([f"experiments={name}"], multirun=True)]
        assert len(runs) == 7 * 3
        assert {r.optim.state_maps for r in runs} == {"current", "bnb_0.41.0"}
        for r in runs:
            dtype = modelling.resolve_compute_dtype(r.quant, "cuda")
            assert dtype == torch.float16 and modelling.resolve_mixed_precision(r.quant, "cuda", dtype) == "fp16"


def test_mixed_precision_follows_the_compute_dtype() -> None:
    from repeatability.config.cell import QuantConfig
    from repeatability.trial import modelling

    mp = modelling.resolve_mixed_precision
    assert mp(QuantConfig(), "cuda", torch.bfloat16) == "bf16" and mp(QuantConfig(), "cpu", torch.float32) == "no"
    assert mp(QuantConfig(compute_dtype="float16"), "cpu", torch.float16) == "fp16"
    assert mp(QuantConfig(compute_dtype="float16", mixed_precision="no"), "cuda", torch.float16) == "no"


class _Control:
    should_training_stop = False


class _State:
    def __init__(self, step: int) -> None:
        self.global_step, self.epoch, self.max_steps = step, 0.0, 100


class _Opt:
    def __init__(self, skipped: bool) -> None:
        self.step_was_skipped = skipped


def test_skipped_steps_are_counted_and_only_a_lasting_overflow_is_a_divergence() -> None:
    from repeatability.trial.train import SCALER_NONFINITE_LIMIT, LoggingCallback, TrainLog

    record, control = TrainLog(), _Control()
    cb = LoggingCallback(record, "t", scaler=True)
    for step in range(SCALER_NONFINITE_LIMIT - 1):  # the scaler skips; training goes on
        cb.on_optimizer_step(None, _State(step), control, optimizer=_Opt(True))
        cb.on_log(None, _State(step + 1), control, logs={"loss": float("inf"), "grad_norm": float("inf")})
    assert record.skipped_steps == list(range(1, SCALER_NONFINITE_LIMIT)) and record.divergence is None
    cb.on_log(None, _State(50), control, logs={"loss": 2.0, "grad_norm": float("inf")})  # streak broken
    for step in range(SCALER_NONFINITE_LIMIT):
        cb.on_log(None, _State(60 + step), control, logs={"loss": float("nan")})
    assert record.divergence["step"] == 60 + SCALER_NONFINITE_LIMIT - 1 and control.should_training_stop
    plain = TrainLog()
    LoggingCallback(plain, "t").on_log(None, _State(3), _Control(), logs={"loss": 2.0, "grad_norm": float("inf")})
    assert plain.divergence == {"reason": "non-finite gradient norm", "step": 3, "last_loss": 2.0}
