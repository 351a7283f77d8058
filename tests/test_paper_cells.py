"""The paper's hub presets, run end to end on local files of the same shape (no hub here):
the real loading code, the paper's templates and the LSAT prompts with answer letters."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from repeatability.records import artifacts
from tests.conftest import run_cli

FAST = ["train.max_steps=2", "train.batch_size=2", "train.max_length=48", "train.eval_every=0",
        "eval.max_examples=6", "eval.max_new_tokens=4", "device=cpu", "determinism.threads=1"]


@pytest.fixture(scope="module")
def platypus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shaped like garage-bAInd/Open-Platypus (parquet under data/)."""
    root = tmp_path_factory.mktemp("open_platypus")
    (root / "data").mkdir()
    rows = [{"input": "", "output": f"The answer is {'ABCD'[i % 4]}.",
             "instruction": f"Question {i}: pick A, B, C or D.", "data_source": "reclor"} for i in range(40)]
    pd.DataFrame(rows).to_parquet(root / "data" / "train-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def quotes_dir(tmp_path_factory: pytest.TempPathFactory, quotes_jsonl: Path) -> Path:
    """A folder shaped like Abirate/english_quotes (quote, author, tags)."""
    root = tmp_path_factory.mktemp("english_quotes")
    rows = [{"quote": json.loads(line)["text"], "author": "A. Person", "tags": ["life"]}
            for line in quotes_jsonl.read_text().splitlines()]
    (root / "quotes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tiny_neox_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    out = tmp_path_factory.mktemp("tiny-neox")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                        num_attention_heads=8, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPTNeoXForCausalLM(cfg).save_pretrained(out)
    return out


def _only_run(results: Path, study: str) -> Path:
    [run] = list(artifacts.iter_run_dirs(results / study))
    return run


def test_llama2_chat_on_open_platypus_shape(tiny_model_dir: Path, platypus_dir: Path, tmp_path: Path) -> None:
    assert run_cli(["model=llama2-7b-chat", f"model.path={tiny_model_dir}", "dataset=open_platypus",
                    f"dataset.hub_id={platypus_dir}", "study=p", f"results_dir={tmp_path}", *FAST]) == 0
    run = _only_run(tmp_path, "p")
    s = artifacts.read_summary(run)
    assert run.parent.name == "llama2-7b-chat__open_platypus__paged_adamw_8bit"
    assert s["data"]["template"] == "llama_inst" and s["data"]["n_total"] == 40 and s["data"]["n_heldout"] == 8
    heldout = [json.loads(x)["text"] for x in (tmp_path / "p" / s["data"]["heldout_file"]).read_text().splitlines()]
    assert all(t.startswith("<s>[INST] Question ") and " [/INST] The answer is " in t and t.endswith(" </s>")
               for t in heldout)
    gens = artifacts.read_generations(run)
    assert {g["prompt_index"] for g in gens} == {0, 1}  # the paper's two LSAT instructions
    assert gens[0]["prompt"].startswith("If you have no keyboarding skills") and "answer_letter" in gens[0]


def test_neoxt_chat_on_open_platypus_shape(tiny_neox_dir: Path, platypus_dir: Path, tmp_path: Path) -> None:
    assert run_cli(["model=gpt-neoxt-chat-20b", f"model.path={tiny_neox_dir}", "dataset=open_platypus",
                    f"dataset.hub_id={platypus_dir}", "study=n", f"results_dir={tmp_path}", *FAST]) == 0
    s = artifacts.read_summary(_only_run(tmp_path, "n"))
    assert s["model"]["architecture"] == "gpt_neox" and s["device"]["n_4bit_layers"] == 2 * 4
    assert s["model"]["lora"]["target_modules"] == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    heldout = (tmp_path / "n" / s["data"]["heldout_file"]).read_text()
    assert "<human>: Question" in heldout and "\\n<bot>: The answer is" in heldout


def test_llama2_on_english_quotes_shape(tiny_model_dir: Path, quotes_dir: Path, tmp_path: Path) -> None:
    assert run_cli(["model=llama2-7b", f"model.path={tiny_model_dir}", "dataset=english_quotes",
                    f"dataset.hub_id={quotes_dir}", "study=q", f"results_dir={tmp_path}", *FAST]) == 0
    s = artifacts.read_summary(_only_run(tmp_path, "q"))
    assert s["data"]["n_total"] == 120 and s["data"]["bos"] == "<s>"
    assert s["status"] == "complete" and s["metrics"]["perplexity_token_weighted"] > 1
