"""Shared fixtures: a random-init tiny Llama with a tiny BPE tokenizer, small local data, and
a helper that runs the real command line in this process (imports paid once per session)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def _pin_xdist_worker() -> None:
    """Under ``pytest -n N`` (make test), give each worker its own share of the cores, so that the
    harness's thread budget (cores // jobs, read from the affinity) does not oversubscribe them:
    two torch processes that each use both cores ran ~8x slower than one alone."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < workers:
        return
    index = int(worker.removeprefix("gw"))
    share = cores[index::workers]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))  # subprocesses the tests start inherit both


_pin_xdist_worker()


def _quotes(n: int) -> list[str]:
    from repeatability.config.cell import DatasetConfig
    from repeatability.trial.data import load_examples

    cfg = DatasetConfig(name="quotes", source="fortune", kind="text", max_chars=200, max_examples=n)
    return [e.text for e in load_examples(cfg)]


@pytest.fixture(scope="session")
def quotes_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 real quotes as a local JSONL (``{"text": ...}`` per line)."""
    path = tmp_path_factory.mktemp("data") / "quotes.jsonl"
    path.write_text("".join(json.dumps({"text": q}) + "\n" for q in _quotes(120)))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init Llama, hidden 512 (so r=8 LoRA tensors reach bnb's min_8bit_size=4096),
    2 layers, no grouped KV (every LoRA tensor is 512x8), with a 600-token BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_quotes(600), trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def tiny_overrides(model_dir: Path, data: Path, results: Path, **extra: Any) -> list[str]:
    """Command-line overrides for a fast run of the tiny model on local quotes."""
    base = {
        "model": "local", "model.path": str(model_dir), "model.name": "tiny",
        "dataset": "local", "dataset.path": str(data), "dataset.name": "tq",
        "dataset.prompts": '["Your silence will","Let the improvement of yourself keep you"]',
        "results_dir": str(results), "train.max_steps": 4, "train.batch_size": 4, "train.max_length": 32,
        "train.eval_every": 2, "train.val_examples": 8, "eval.max_examples": 12, "eval.max_new_tokens": 6,
        "eval.batch_size": 8, "determinism.threads": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def sweep(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny runs shared by test_run and test_contract: trials 1,2 of the 8-bit arm in study a,
    and trial 1 again in study b (same seeds)."""
    results = tmp_path_factory.mktemp("results")
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, results)
    assert run_cli(["-m", "trial=1,2", "optim=paged_adamw_8bit", "study=a", *args]) == 0
    assert run_cli(["trial=1", "optim=paged_adamw_8bit", "study=b", *args]) == 0
    return results


def run_cli(args: list[str]) -> int:
    """``python -m repeatability.run ARGS`` in this process; returns the exit code."""
    from hydra.core.global_hydra import GlobalHydra

    from repeatability import run

    old = sys.argv
    sys.argv = ["repeatability.run", *args]
    try:
        run.main()
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
