"""Evaluation with each 4-bit weight dequantized once (trial/weight_cache.py) gives the bits of
bitsandbytes' own per-forward dequantize: held-out scoring, greedy generation, and it leaves
training forwards and gradients to bitsandbytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from repeatability.config.cell import LoraConfig, ModelConfig, QuantConfig
from repeatability.trial import data, evaluate, modelling
from repeatability.trial.weight_cache import dequantized_4bit_weights

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, quotes_jsonl: Path) -> tuple[Any, Any, list[str]]:
    """The harness's 4-bit tiny Llama (NF4, double quant) with a LoRA adapter that matters."""
    tok = modelling.load_tokenizer(str(tiny_model_dir))
    base = modelling.load_base(str(tiny_model_dir), QuantConfig(), "cpu", torch.float32)
    torch.manual_seed(0)
    mcfg = ModelConfig(name="tiny", source="local", path=str(tiny_model_dir), lora_targets_all=TARGETS)
    model = modelling.add_lora(base, mcfg, LoraConfig(), quantized=True, grad_ckpt=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    quotes = [json.loads(line)["text"] for line in quotes_jsonl.read_text().splitlines()[:12]]
    return model.eval(), tok, [tok.bos_token + q + tok.eos_token for q in quotes]


def test_every_4bit_layer_is_switched_and_restored(tiny: tuple[Any, Any, list[str]]) -> None:
    model, _, _ = tiny
    n = modelling.count_4bit_layers(model)
    assert n == 7 * model.config.num_hidden_layers
    with dequantized_4bit_weights(model) as switched:
        assert switched == n
    import bitsandbytes as bnb

    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    with dequantized_4bit_weights(model, enabled=False) as switched:
        assert switched == 0


def test_scoring_is_bitwise_the_same(tiny: tuple[Any, Any, list[str]]) -> None:
    model, tok, texts = tiny
    ids = tok(texts, add_special_tokens=False, truncation=True, max_length=32)["input_ids"]
    plain = evaluate.sequence_nll(model, ids, tok.pad_token_id, 5, "cpu")
    with dequantized_4bit_weights(model):
        cached = evaluate.sequence_nll(model, ids, tok.pad_token_id, 5, "cpu")
    assert [s.hex() for s, _ in cached] == [s.hex() for s, _ in plain]
    assert [n for _, n in cached] == [n for _, n in plain]


def test_greedy_generation_and_logits_are_bitwise_the_same(tiny: tuple[Any, Any, list[str]]) -> None:
    model, tok, texts = tiny
    kw: dict[str, Any] = {"sample": False, "seed": None, "temperature": 0.1, "top_p": 0.1, "max_new_tokens": 12,
                          "device": "cpu"}
    plain = [evaluate.generate(model, tok, t[:40], **kw) for t in texts[:3]]
    enc = tok(texts[:2], add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    with dequantized_4bit_weights(model):
        cached = [evaluate.generate(model, tok, t[:40], **kw) for t in texts[:3]]
        with torch.no_grad():
            cached_logits = model(**enc).logits
    assert cached == plain
    assert torch.equal(cached_logits, logits)


def test_training_forward_and_gradients_stay_with_bitsandbytes(tiny: tuple[Any, Any, list[str]]) -> None:
    model, tok, texts = tiny
    batch = data.tokenize(tok, texts[:2], 24)
    inp = torch.tensor([batch[0][:16], batch[1][:16]])

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model.train()
        torch.manual_seed(1)  # the same LoRA-dropout masks in both passes
        model(input_ids=inp, labels=inp).loss.backward()
        model.eval()
        return [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]

    plain = grads()
    with dequantized_4bit_weights(model):
        cached = grads()
    assert all(torch.equal(a, b) for a, b in zip(plain, cached))
    assert sum(float(g.abs().sum()) for g in plain) > 0
