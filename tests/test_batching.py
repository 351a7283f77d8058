"""Padding-free batches (transformers' DataCollatorWithFlattening and its packed-sequence masks)
give the padded batches' numbers on the tiny Llama, never let a token see another example, and
are refused where the attention would not keep examples apart."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from repeatability.config.cell import LoraConfig, ModelConfig, QuantConfig
from repeatability.config.errors import ConfigError
from repeatability.trial import data, evaluate, modelling
from tests.conftest import run_cli, tiny_overrides


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, quotes_jsonl: Path) -> tuple[Any, list[list[int]]]:
    """The harness's 4-bit tiny Llama with LoRA (eval mode: no dropout) and 8 real quotes as ids."""
    tok = modelling.load_tokenizer(str(tiny_model_dir))
    base = modelling.load_base(str(tiny_model_dir), QuantConfig(), "cpu", torch.float32)
    torch.manual_seed(0)
    mcfg = ModelConfig(name="tiny", source="local", path=str(tiny_model_dir),
                       lora_targets_all=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = modelling.add_lora(base, mcfg, LoraConfig(), quantized=True, grad_ckpt=False)
    with torch.no_grad():  # LoRA B starts at zero: give it weights so the adapter matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    quotes = [json.loads(line)["text"] for line in quotes_jsonl.read_text().splitlines()[:8]]
    ids = data.tokenize(tok, [tok.bos_token + q + tok.eos_token for q in quotes], 32)
    return model.eval(), ids


def _per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of each row's targets (labels shifted by one, -100 ignored) of a padded batch."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    valid = labels[:, 1:] != -100
    return (nll * valid).sum(1) / valid.sum(1)


def _packed_per_example_nll(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same from one packed row: examples are split where position_ids restart at 0."""
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    out = []
    for a, b in itertools.pairwise(starts):
        row_logits, row_ids = logits[0, a:b], batch["input_ids"][0, a:b]
        out.append(torch.nn.functional.cross_entropy(row_logits[:-1], row_ids[1:]))
    return torch.stack(out)


def test_padding_free_batch_has_the_padded_losses_and_gradients(tiny: tuple[Any, list[list[int]]]) -> None:
    model, ids = tiny
    features = [{"input_ids": x} for x in ids[:4]]
    padded = data.make_collator("padded", pad_id=3)(features)
    flat = data.make_collator("padding_free", pad_id=3)(features)
    assert flat["input_ids"].shape == (1, sum(len(x) for x in ids[:4]))  # no padding at all
    assert "attention_mask" not in flat
    assert data.token_counts(flat) == (flat["input_ids"].numel(),) * 2
    real, slots = data.token_counts(padded)
    assert real == flat["input_ids"].numel() < slots
    with torch.no_grad():
        per_padded = _per_example_nll(model(**padded).logits, padded["labels"])
        per_flat = _packed_per_example_nll(model(**flat).logits, flat)
    torch.testing.assert_close(per_flat, per_padded, rtol=1e-5, atol=1e-5)
    # the batch loss the Trainer differentiates, and its LoRA gradients
    grads = []
    for batch in (padded, flat):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    model.zero_grad()
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    for g_flat, g_pad in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_flat, g_pad, rtol=1e-4, atol=1e-6)


def test_no_token_attends_across_an_example_boundary(tiny: tuple[Any, list[list[int]]]) -> None:
    model, ids = tiny
    collate = data.make_collator("padding_free", pad_id=3)
    batch = collate([{"input_ids": x} for x in ids[:3]])
    changed = [ids[0][0]] + [(t + 7) % 500 + 4 for t in ids[0][1:]]  # example 1 perturbed, BOS kept
    other = collate([{"input_ids": x} for x in [changed, *ids[1:3]]])
    with torch.no_grad():
        before, after = model(**batch).logits[0], model(**other).logits[0]
    n1 = len(ids[0])
    assert (before[:n1] - after[:n1]).abs().max() > 1e-2  # the perturbation does change example 1
    torch.testing.assert_close(after[n1:], before[n1:], rtol=1e-5, atol=1e-5)  # examples 2 and 3 never saw it


def test_held_out_scoring_is_the_same_padded_padding_free_or_one_at_a_time(tiny: tuple[Any, list[list[int]]]) -> None:
    model, ids = tiny
    single = evaluate.perplexity(evaluate.sequence_nll(model, ids, 3, 1, "cpu"))
    for batching in ("padded", "padding_free"):
        ppl = evaluate.perplexity(evaluate.sequence_nll(model, ids, 3, 4, "cpu", batching))
        assert ppl.tokens == single.tokens == sum(len(x) - 1 for x in ids)
        assert ppl.token_weighted == pytest.approx(single.token_weighted, rel=1e-5)
        assert ppl.mean_per_sequence == pytest.approx(single.mean_per_sequence, rel=1e-5)


def test_the_packed_attention_probe_passes_sdpa_and_eager(tiny: tuple[Any, list[list[int]]]) -> None:
    model, ids = tiny
    assert model.config._attn_implementation in ("sdpa", "eager")
    modelling.check_packed_attention(model, ids[0], ids[1], "cpu", "train.batching")  # no error


class _LeakyLM(torch.nn.Module):
    """A causal LM whose every position sees the running mean of all earlier tokens, whatever
    the position_ids: it ignores packing, as an attention without packed masking would."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation="sdpa", use_cache=False)
        self.emb = torch.nn.Embedding(600, 16)

    def forward(self, input_ids: torch.Tensor, position_ids: Any = None, **_: Any) -> Any:
        h = self.emb(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return SimpleNamespace(logits=h)


@pytest.mark.parametrize("change,message", [
    ({}, "lets packed examples see each other"),
    ({"_attn_implementation": "paged|sdpa"}, "does not separate packed examples"),
    ({"use_cache": True}, "KV cache"),
])
def test_padding_free_is_refused_where_attention_would_cross_examples(change: dict[str, Any], message: str) -> None:
    model = _LeakyLM()
    for key, value in change.items():
        setattr(model.config, key, value)
    with pytest.raises(ConfigError, match=message) as err:
        modelling.check_packed_attention(model, [5, 6, 7], [8, 9, 10], "cpu", "train.batching")
    assert "use train.batching=padded" in str(err.value)


def test_a_padding_free_run_trains_like_the_padded_one(tiny_model_dir: Path, quotes_jsonl: Path,
                                                       tmp_path: Path) -> None:
    """Same seeds, no dropout: same batches (same real tokens), same loss curve to float
    tolerance, no padding computed; the summary records both."""
    summaries = {}
    for batching in ("padded", "padding_free"):
        args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, study=batching, **{
            "train.batching": batching, "eval.batching": batching, "lora.dropout": 0.0, "train.eval_every": 0})
        assert run_cli(args) == 0
        run = next((tmp_path / batching).glob("*/trial-01"))
        summaries[batching] = json.loads((run / "summary.json").read_text())
    pad, free = summaries["padded"]["batching"], summaries["padding_free"]["batching"]
    assert ((pad["train"], pad["eval"], free["train"], free["eval"])
            == ("padded", "padded", "padding_free", "padding_free"))
    assert free["train_real_tokens"] == free["train_token_slots"] == pad["train_real_tokens"] > 0
    assert free["real_token_efficiency"] == 1.0
    assert pad["real_token_efficiency"] == pytest.approx(pad["train_real_tokens"] / pad["train_token_slots"])
    assert pad["real_token_efficiency"] < 1.0
    m_pad, m_free = summaries["padded"]["metrics"], summaries["padding_free"]["metrics"]
    assert m_free["final_train_loss"] == pytest.approx(m_pad["final_train_loss"], rel=1e-4)
    assert m_free["perplexity_token_weighted"] == pytest.approx(m_pad["perplexity_token_weighted"], rel=1e-4)


def test_a_run_made_before_the_batching_keys_existed_is_still_recognised(
        tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished run whose config.yaml lacks train/eval.batching ran padded batches (the schema
    default): the same command with padded batches skips it; the padding-free default is
    another config and is refused rather than mixed into the cell."""
    from repeatability.records import integrity

    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, study="old", **{"train.batching": "padded"})
    assert run_cli(args) == 0
    run = next((tmp_path / "old").glob("*/trial-01"))
    config = (run / "config.yaml").read_text()
    old = "\n".join(line for line in config.splitlines() if not line.strip().startswith("batching:")) + "\n"
    assert old != config
    (run / "config.yaml").write_text(old)
    manifest = json.loads((run / "MANIFEST.json").read_text())  # as written by the older version
    manifest["files"]["config.yaml"] = integrity.file_sha256(run / "config.yaml")
    (run / "MANIFEST.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert run_cli(["-m", *args, "eval.batching=padded"]) == 0
    assert "1 runs (1 skipped)" in capsys.readouterr().out
    assert run_cli([a for a in args if not a.startswith("train.batching")]) == 1  # the preset's padding_free
    assert "different config (train.batching)" in capsys.readouterr().out


def test_half_precision_rounding_is_not_taken_for_leaking(tiny: tuple[Any, list[list[int]]]) -> None:
    """fp16 logits round coarser than any fixed tolerance (SmolLM2: 0.10 packed vs alone), but leaking
    changes them far more (19.1): the probe judges half precision against a leaky reading of the row."""
    model, ids = tiny
    half = copy.deepcopy(model).to(torch.float16)
    modelling.check_packed_attention(half, ids[0], ids[1], "cpu", "train.batching")  # no error
    leaky = _LeakyLM().to(torch.float16)
    with pytest.raises(ConfigError, match=r"beyond 5% of the .* that leaking changes"):
        modelling.check_packed_attention(leaky, [5, 6, 7], [8, 9, 10], "cpu", "train.batching")
