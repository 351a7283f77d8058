"""Every config file composes into the typed schema; seeds follow their policy."""

from __future__ import annotations

import pytest

from repeatability.config.errors import ConfigError
from repeatability.config.run import GROUPS, RunConfig, to_run_config
from repeatability.launching import preflight
from repeatability.trial.determinism import apply_determinism, read_determinism_flags
from repeatability.trial.seeding import resolve_seeds

NEEDS_PATH = {("model", "local"): "model.path=/tmp/x", ("dataset", "local"): "dataset.path=/tmp/x.jsonl"}


def _options() -> list[tuple[str, str]]:
    return [(g, name) for g in GROUPS for name in preflight.group_choices(g)]


@pytest.mark.parametrize("group,name", _options())
def test_every_config_file_composes(group: str, name: str) -> None:
    extra = [NEEDS_PATH[(group, name)]] if (group, name) in NEEDS_PATH else []
    [cfg] = preflight.compose_jobs([f"{group}={name}", *extra], multirun=False)
    rc = to_run_config(cfg)
    assert isinstance(rc, RunConfig)
    if group in ("model", "dataset", "optim"):
        # the file name is the choice's name; the historical-maps preset spells out the release
        expected = {"paged_adamw_8bit_bnb041": "paged_adamw_8bit-maps_bnb_0.41.0"}.get(name, name)
        assert getattr(rc, group).name == expected


@pytest.mark.parametrize("name", preflight.group_choices("experiments"))
def test_every_experiment_composes(name: str) -> None:
    jobs = preflight.compose_jobs([f"experiments={name}"], multirun=True)
    assert len(jobs) >= 2
    runs = [to_run_config(j) for j in jobs]
    assert len({(r.model.name, r.dataset.name, r.optim.name, r.variant, r.trial) for r in runs}) == len(runs)


def test_card_command_expands_to_fourteen_jobs() -> None:
    jobs = preflight.compose_jobs(["trial=1,2,3,4,5,6,7", "optim=paged_adamw_8bit,paged_adamw_32bit"], multirun=True)
    runs = [to_run_config(j) for j in jobs]
    assert sorted((r.optim.name, r.trial) for r in runs) == sorted(
        (o, t) for o in ("paged_adamw_8bit", "paged_adamw_32bit") for t in range(1, 8))
    assert {r.optim.optim_bits for r in runs} == {8, 32} and all(r.optim.is_paged for r in runs)
    assert {r.model.name for r in runs} == {"smollm2-135m"} and {r.dataset.name for r in runs} == {"quotes"}


def test_paper_presets() -> None:
    [cfg] = preflight.compose_jobs(["train=paper", "model=llama2-7b", "dataset=english_quotes"], multirun=False)
    rc = to_run_config(cfg)
    assert (rc.train.epochs, rc.train.batch_size, rc.train.max_length, rc.train.lr_scheduler) == (3, 1, 512, "constant")
    assert rc.lora.r == 8 and rc.lora.alpha == 32 and rc.lora.dropout == 0.05
    assert rc.model.lora_targets_all == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    [cfg] = preflight.compose_jobs(["model=gpt-neox-20b"], multirun=False)
    assert to_run_config(cfg).model.lora_targets_attention == ["query_key_value", "dense"]


def test_cross_field_checks() -> None:
    [cfg] = preflight.compose_jobs(["optim=adamw_torch", "optim.optim_bits=8"], multirun=False)
    with pytest.raises(ConfigError, match="torch_adamw has 32-bit"):
        to_run_config(cfg)


def test_seed_policies() -> None:
    from repeatability.config.run import DeterminismConfig

    per = [resolve_seeds(DeterminismConfig(), t) for t in (1, 2)]
    assert per[0].lora_init != per[1].lora_init and per[0].data_order != per[1].data_order
    assert len({per[0].lora_init, per[0].data_order, per[0].dropout, per[0].generation}) == 4
    assert per[0] == resolve_seeds(DeterminismConfig(), 1)  # stable across calls and processes
    fixed = [resolve_seeds(DeterminismConfig(seed_policy="fixed"), t) for t in (1, 2)]
    assert fixed[0].to_dict() == fixed[1].to_dict()
    paper = [resolve_seeds(DeterminismConfig(seed_policy="paper"), t) for t in (1, 2)]
    assert paper[0].data_order == paper[0].dropout == 42 and paper[0].rules["lora_init"] == "entropy"
    only_order = [resolve_seeds(DeterminismConfig(seed_policy="fixed", data_order="trial"), t) for t in (1, 2)]
    assert only_order[0].data_order != only_order[1].data_order and only_order[0].lora_init == only_order[1].lora_init


def test_determinism_flags_are_read_back() -> None:
    import torch

    try:
        flags = apply_determinism("strict", None)
        assert flags["use_deterministic_algorithms"] is True and torch.are_deterministic_algorithms_enabled()
        assert flags["cudnn_deterministic"] is True and flags["cudnn_benchmark"] is False
        assert flags["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        off = apply_determinism("off", None)
        assert off["use_deterministic_algorithms"] is False and off["cudnn_benchmark"] is True
    finally:
        apply_determinism("default", None)
    assert read_determinism_flags("default")["use_deterministic_algorithms"] is False
