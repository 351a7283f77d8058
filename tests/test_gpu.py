"""GPU tier: bf16 compute on CUDA, paging as it really happened (skips without CUDA)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from repeatability import artifacts
from tests.conftest import run_cli, tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_gpu_runs_bf16_and_records_paging(tiny_model_dir: Path, quotes_jsonl: Path, tmp_path: Path) -> None:
    args = tiny_overrides(tiny_model_dir, quotes_jsonl, tmp_path, device="cuda")
    assert run_cli(["-m", "study=gpu", "trial=1,2", "optim=paged_adamw_8bit,paged_adamw_32bit", *args]) == 0
    runs = [artifacts.read_summary(p) for p in artifacts.iter_run_dirs(tmp_path / "gpu")]
    assert len(runs) == 4
    for s in runs:
        assert s["status"] == "complete" and s["device"]["type"] == "cuda"
        assert s["device"]["compute_dtype"] == "bfloat16"
        assert math.isfinite(s["metrics"]["perplexity_token_weighted"])
        assert 0 < s["memory"]["max_allocated_pct"] < 100
        eff = s["optimizer"]["effective"]
        # bitsandbytes pages only state tensors of >= 1e5 elements; LoRA tensors here are 4096
        assert isinstance(eff["paging_effective"], bool) and eff["paging_requested"] is True
        print(s["cell"]["optim"], s["trial"], "paging effective:", eff["paging_effective"],
              "ppl:", s["metrics"]["perplexity_token_weighted"], "sha:", s["adapter"]["sha256"][:12])
