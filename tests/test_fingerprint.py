"""The numerics fingerprint (summary ``numerics``): the base model's loss on a fixed canary batch
before the first update — equal in every trial of a cell, different when the forward changes."""

from __future__ import annotations

from pathlib import Path

from repeatability.records import artifacts
from repeatability.trial import evaluate


def _summaries(study: Path) -> list[dict]:
    return [artifacts.read_summary(p) for p in artifacts.iter_run_dirs(study)]


def test_fingerprint_is_equal_across_trials_of_a_cell_and_carries_the_commit(sweep: Path) -> None:
    """Trials 1 and 2 differ in every seed, yet LoRA's B starts at zero: the same canary loss, bit for bit."""
    runs = _summaries(sweep / "a") + _summaries(sweep / "b")
    assert len(runs) == 3
    prints = [r["numerics"] for r in runs]
    assert {p["canary_loss_hex"] for p in prints} == {prints[0]["canary_loss_hex"]}
    assert float.fromhex(prints[0]["canary_loss_hex"]) == prints[0]["canary_loss"]
    assert 5.0 < prints[0]["canary_loss"] < 7.5  # a random 600-token model: about ln(600) = 6.4
    assert prints[0]["canary_sequences"] == evaluate.CANARY_SEQUENCES and prints[0]["canary_tokens"] > 50
    assert len(prints[0]["canary_ids_sha256"]) == 64
    assert all(len(p["commit"]) == 40 and isinstance(p["dirty"], bool) for p in prints)


def test_fingerprint_moves_when_the_forward_changes(tiny_model_dir: Path, quotes_jsonl: Path) -> None:
    """A changed forward changes the canary loss's bits: bf16 instead of fp32 compute, or one
    constant of the code (RMSNorm's epsilon 1e-6 -> 1e-5); the same forward twice does not;
    another canary batch gives another ids digest. (Eager vs sdpa attention gave the same bits for
    this tiny fp32 Llama on the 2-core EPYC, so that change is not the one asserted here.)"""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [json.loads(line)["text"] for line in quotes_jsonl.read_text().splitlines()]

    def fingerprint(start: int = 0, **load: object) -> dict:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **load)
        return evaluate.canary_fingerprint(model, tokenizer, texts[start:], 32, "cpu")

    fp32 = fingerprint()
    assert fingerprint() == fp32
    for changed in (fingerprint(dtype=torch.bfloat16), fingerprint(rms_norm_eps=1e-5)):
        assert changed["canary_ids_sha256"] == fp32["canary_ids_sha256"]
        assert changed["canary_loss_hex"] != fp32["canary_loss_hex"]
        assert abs(changed["canary_loss"] - fp32["canary_loss"]) < 0.05 * fp32["canary_loss"]  # the same model
    assert fingerprint(start=8)["canary_ids_sha256"] != fp32["canary_ids_sha256"]
