"""Seed policies on the CPU fixture: which source moves what, and `fixed` gives identical bits."""

from __future__ import annotations

from pathlib import Path

import pytest

from repeatability.records import artifacts, curve_files
from tests.conftest import run_cli, tiny_overrides

CELL = "tiny__tq__paged_adamw_8bit"


def _sweep(model: Path, data: Path, results: Path, study: str, **extra: str) -> list[dict]:
    args = tiny_overrides(model, data, results, **{"train.max_steps": 3, "train.eval_every": 0, **extra})
    assert run_cli(["-m", f"study={study}", "trial=1,2", *args]) == 0
    runs = [results / study / CELL / f"trial-0{t}" for t in (1, 2)]
    return [{"summary": artifacts.read_summary(r), "curve": [x["loss"] for x in curve_files.read_loss_curve(r)
                                                            if x["split"] == "train"]} for r in runs]


@pytest.fixture(scope="module")
def policies(tiny_model_dir: Path, quotes_jsonl: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    results = tmp_path_factory.mktemp("policies")
    fixed = {"determinism.seed_policy": "fixed"}
    return {
        "fixed": _sweep(tiny_model_dir, quotes_jsonl, results, "fixed", **fixed),
        "data_order": _sweep(tiny_model_dir, quotes_jsonl, results, "order", **fixed,
                             **{"determinism.data_order": "trial"}),
        "dropout": _sweep(tiny_model_dir, quotes_jsonl, results, "dropout", **fixed,
                          **{"determinism.dropout": "trial"}),
        "lora_init": _sweep(tiny_model_dir, quotes_jsonl, results, "init", **fixed,
                            **{"determinism.lora_init": "trial"}),
    }


def _sha(run: dict) -> str:
    return run["summary"]["adapter"]["sha256"]


def test_fixed_seeds_give_bitwise_identical_trials(policies: dict[str, list[dict]]) -> None:
    one, two = policies["fixed"]
    assert _sha(one) == _sha(two) and one["curve"] == two["curve"]
    assert (one["summary"]["metrics"]["perplexity_token_weighted"]
            == two["summary"]["metrics"]["perplexity_token_weighted"])


def test_data_order_changes_the_first_batch(policies: dict[str, list[dict]]) -> None:
    one, two = policies["data_order"]
    assert one["summary"]["seeds"]["lora_init"] == two["summary"]["seeds"]["lora_init"]
    assert one["summary"]["seeds"]["dropout"] == two["summary"]["seeds"]["dropout"]
    assert one["curve"][0] != two["curve"][0]  # another batch at step 1
    assert _sha(one) != _sha(two)


def test_dropout_and_lora_init_leave_the_first_loss_alone(policies: dict[str, list[dict]]) -> None:
    """LoRA B starts at zero, so neither dropout nor the A draw can change the first forward pass:
    step 1's loss is bit-identical, and the adapters still end up different."""
    for source in ("dropout", "lora_init"):
        one, two = policies[source]
        assert one["curve"][0] == two["curve"][0], source
        assert one["curve"][1:] != two["curve"][1:], source
        assert _sha(one) != _sha(two), source
        assert one["summary"]["data"]["heldout_sha256"] == two["summary"]["data"]["heldout_sha256"]


def test_an_eval_pass_does_not_change_training_gradients(tiny_model_dir: Path) -> None:
    """Regression: bitsandbytes repacks 4-bit weights for CPU inference after an eval pass and
    then loses the gradient through the base. The harness keeps one layout: a no-grad eval
    forward before training must leave the LoRA gradients bit-identical (and equal to an fp32
    reference with the same dequantized weights)."""
    import bitsandbytes as bnb
    import torch

    from repeatability.config.cell import LoraConfig, ModelConfig, QuantConfig
    from repeatability.trial.modelling import add_lora, load_base

    mcfg = ModelConfig(name="tiny", source="local", path=str(tiny_model_dir),
                       lora_targets_all=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ids = torch.randint(4, 500, (4, 20), generator=torch.Generator().manual_seed(0))

    def grad_norm(eval_first: bool, quantized: bool = True) -> float:
        base = load_base(str(tiny_model_dir), QuantConfig(load_in_4bit=quantized), "cpu", torch.float32)
        if not quantized:  # fp32 reference carrying the NF4-dequantized weights
            q = load_base(str(tiny_model_dir), QuantConfig(), "cpu", torch.float32)
            deq = {n + ".weight": bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
                   for n, m in q.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
            base.load_state_dict(deq, strict=False)
        if eval_first:
            with torch.no_grad():
                base.eval()(input_ids=ids)
        torch.manual_seed(1)
        model = add_lora(base, mcfg, LoraConfig(dropout=0.0), quantized=quantized, grad_ckpt=False).train()
        model(input_ids=ids, labels=ids).loss.backward()
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)))

    plain, after_eval, reference = grad_norm(False), grad_norm(True), grad_norm(False, quantized=False)
    assert plain == after_eval
    assert plain == pytest.approx(reference, rel=1e-5)


def test_strict_mode_runs_and_records_its_flags(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    """strict on CPU: the flags are really set (read back into the summary), and the result equals
    default mode bit for bit (CPU kernels here are deterministic either way)."""
    import torch

    runs = {}
    for mode in ("strict", "default"):
        args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, determinism=mode,
                              **{"train.max_steps": 3, "eval.sample_repeats": 3, "eval.base_repeats": 2})
        try:
            assert run_cli([f"study={mode}", "trial=1", *args]) == 0
        finally:
            torch.use_deterministic_algorithms(False)
        runs[mode] = artifacts.read_summary(tmp_path / mode / CELL / "trial-01")
    flags = runs["strict"]["determinism"]
    assert flags["mode"] == "strict" and flags["use_deterministic_algorithms"] is True
    assert flags["cudnn_deterministic"] is True and flags["cudnn_benchmark"] is False
    assert flags["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and flags["FLASH_ATTENTION_DETERMINISTIC"] == "1"
    assert runs["default"]["determinism"]["use_deterministic_algorithms"] is False
    assert runs["strict"]["adapter"]["sha256"] == runs["default"]["adapter"]["sha256"]
    # ablation (b): the base model scored twice gives exactly the same perplexity
    m = runs["strict"]["metrics"]
    assert len(m["base_perplexity_repeats"]) == 2 and m["base_perplexity_repeat_spread"] == 0.0
    # ablation (a): 3 sampled generations per prompt under consecutive generation seeds, plus greedy
    gens = artifacts.read_generations(tmp_path / "strict" / CELL / "trial-01")
    sampled = [g for g in gens if g["mode"] == "sampled" and g["prompt_index"] == 0]
    seed = runs["strict"]["seeds"]["generation"]
    assert [(g["sample_index"], g["seed"]) for g in sampled] == [(k, seed + k) for k in range(3)]
    assert len([g for g in gens if g["mode"] == "greedy"]) == 2
