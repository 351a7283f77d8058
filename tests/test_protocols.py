"""The reference studies besides the paper (000, 001, 003, 004) as presets and experiments:
the stated numbers compose, the Alpaca templates are exact, and the new hub presets load
local copies of their datasets' schemas through the real ``load_examples`` path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from repeatability.config.cell import DatasetConfig
from repeatability.config.errors import ConfigError
from repeatability.config.run import DeterminismConfig, RunConfig, TrainConfig, to_run_config
from repeatability.launching import preflight
from repeatability.trial import data
from repeatability.trial.data import Example, apply_template, load_examples, split_examples

FUSED_QKV = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

# two real rows of tatsu-lab/alpaca (rows 0 and 5), text column included
ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1.Eat a balanced diet and make sure to include plenty of fruits and vegetables. \n2. Exercise "
               "regularly to keep your body active and strong. \n3. Get enough sleep and maintain a consistent "
               "sleep schedule.",
     "text": "Below is an instruction that describes a task. Write a response that appropriately completes the "
             "request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n1.Eat a balanced "
             "diet and make sure to include plenty of fruits and vegetables. \n2. Exercise regularly to keep your "
             "body active and strong. \n3. Get enough sleep and maintain a consistent sleep schedule."},
    {"instruction": "Identify the odd one out.", "input": "Twitter, Instagram, Telegram", "output": "Telegram",
     "text": "Below is an instruction that describes a task, paired with an input that provides further context. "
             "Write a response that appropriately completes the request.\n\n### Instruction:\nIdentify the odd one "
             "out.\n\n### Input:\nTwitter, Instagram, Telegram\n\n### Response:\nTelegram"},
]


def _experiment(name: str) -> list[RunConfig]:
    return [to_run_config(j) for j in preflight.compose_jobs([f"experiments={name}"], multirun=True)]


def _one(*overrides: str) -> RunConfig:
    [cfg] = preflight.compose_jobs(list(overrides), multirun=False)
    return to_run_config(cfg)


# --------------------------------------------------------------------------- presets and experiments


def test_pavlyshenko_000_tables_1_and_2() -> None:
    runs = _experiment("pavlyshenko_alpaca")
    assert {r.model.hub_id for r in runs} == {"meta-llama/Llama-2-7b-hf", "mistralai/Mixtral-8x7B-v0.1"}
    assert len(runs) == 2 * 7 * 2  # models x trials x optimizer arms
    for r in runs:
        assert (r.lora.r, r.lora.alpha, r.lora.dropout) == (64, 16, 0.1)
        t = r.train
        assert (t.epochs, t.batch_size, t.lr, t.warmup_ratio, t.max_length) == (2, 4, 2.5e-5, 0.03, 1024)
        assert t.lr_scheduler == "constant_with_warmup" and t.warmup_steps == 0
        assert r.quant.compute_dtype == "bfloat16" and r.quant.load_in_4bit
        assert r.model.template == "llama_inst_alpaca" and r.dataset.hub_id == "tatsu-lab/alpaca"
    mixtral = _one("model=mixtral-8x7b").model
    assert mixtral.lora_targets_all == ATTENTION  # experts are fused parameters in transformers 5


def test_bello_001_per_model_epochs_and_batch() -> None:
    runs = _experiment("bello_alpaca")
    stated = {"open-llama-3b": (2, 4), "bloom-3b": (1, 2), "falcon-rw-1b": (1, 1)}
    assert {r.model.name: (r.train.epochs, r.train.batch_size) for r in runs} == stated
    assert {r.model.hub_id for r in runs} == {"openlm-research/open_llama_3b", "bigscience/bloom-3b",
                                             "tiiuae/falcon-rw-1b"}
    for r in runs:
        assert (r.train.lr_scheduler, r.train.warmup_ratio) == ("linear", 0.1)
        assert r.model.template == "alpaca" and r.dataset.input_field == "input"
        prompts = data.prompt_set(r)  # the preset conf/prompts/bello_questions.yaml
        assert r.eval.prompts == "bello_questions" and len(prompts) == 15
        assert prompts[0] == "What is the capital city of Australia?" and prompts[12].endswith("3x + 5 = 17?")
        expected = FUSED_QKV if r.model.name != "open-llama-3b" else LLAMA_ALL
        assert r.model.lora_targets_all == expected


def test_loraland_003_mistral_tasks() -> None:
    runs = _experiment("loraland_mistral")
    assert {r.model.hub_id for r in runs} == {"mistralai/Mistral-7B-v0.1"}
    assert {r.dataset.hub_id for r in runs} == {"stanfordnlp/sst2", "ise-uiuc/Magicoder-OSS-Instruct-75K"}
    assert {r.eval.max_examples for r in runs} == {1000}  # fixed 1,000-example test subsets
    assert all(r.quant.load_in_4bit and r.model.lora_targets_all == LLAMA_ALL for r in runs)


def test_zephyr_004_rank_per_task_and_target_arms() -> None:
    runs = _experiment("zephyr_tasks")
    assert {r.model.hub_id for r in runs} == {"HuggingFaceH4/zephyr-7b-beta"}
    cells = {(r.dataset.name, r.lora.targets, r.variant): r.lora.r for r in runs}
    assert cells == {("samsum", "attention", "lora-attention"): 64, ("samsum", "all_linear", "lora-all_linear"): 64,
                     ("newsgroups", "attention", "lora-attention"): 8,
                     ("newsgroups", "all_linear", "lora-all_linear"): 8}
    assert len(runs) == 2 * 2 * 7 * 2


def test_zephyr_004_neftune_arm_is_recorded_and_scored() -> None:
    runs = _experiment("zephyr_tasks_neftune")
    assert len(runs) == 2 * 2 * 7 * 2 and {r.train.neftune_noise_alpha for r in runs} == {5.0}
    assert {r.variant for r in runs} == {"lora-attention-neftune", "lora-all_linear-neftune"}
    [newsgroups] = preflight.compose_jobs(["experiments=zephyr_tasks_neftune", "dataset=newsgroups",
                                           "eval.tasks=[classification]", "eval.baselines=[zero_shot,few_shot]"],
                                          multirun=False)
    cfg = to_run_config(newsgroups)
    assert cfg.eval.tasks == ["classification"] and cfg.eval.baselines == ["zero_shot", "few_shot"]
    assert cfg.lora.r == 8 and cfg.eval.task_examples == 1000


# --------------------------------------------------------------------------- checks of the new fields


@pytest.mark.parametrize("kwargs,match", [
    ({"warmup_ratio": 0.03}, "constant ignores warm-up"),
    ({"warmup_steps": 10}, "constant ignores warm-up"),
    ({"lr_scheduler": "linear", "warmup_ratio": 0.1, "warmup_steps": 5}, "not both"),
    ({"lr_scheduler": "linear", "warmup_ratio": 1.5}, r"\[0, 1\)"),
])
def test_warmup_checks(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_input_field_needs_an_instruction_dataset() -> None:
    with pytest.raises(ConfigError, match="input_field is read for kind=instruction only"):
        DatasetConfig(name="x", source="hub", hub_id="x", kind="text", input_field="input")


def test_warmup_ratio_reaches_the_trainer(tmp_path: Path) -> None:
    """train() hands the ratio to TrainingArguments, which turns it into 10% of the steps."""
    from repeatability.trial import train as train_mod
    from repeatability.trial.seeding import resolve_seeds

    cfg = TrainConfig(lr_scheduler="linear", warmup_ratio=0.1)
    args = train_mod._training_args(cfg, resolve_seeds(DeterminismConfig(), 1), "cpu", "no", tmp_path,
                                    eval_batch_size=8, has_val=False)
    assert args.lr_scheduler_type == "linear" and args.get_warmup_steps(200) == 20


# --------------------------------------------------------------------------- templates


def test_alpaca_template_matches_the_dataset_text_column() -> None:
    for row in ALPACA_ROWS:
        ex = Example(instruction=row["instruction"], input=row["input"], response=row["output"])
        assert apply_template("alpaca", "instruction", ex, "", "") == row["text"]
        assert apply_template("alpaca", "instruction", ex, "<s>", "</s>") == "<s>" + row["text"] + "</s>"
        prompt = apply_template("alpaca", "instruction", ex, "<s>", "</s>", prompt_only=True)
        assert prompt == "<s>" + row["text"][: -len(row["output"])] and prompt.endswith("### Response:\n")


def test_alpaca_template_exact_strings() -> None:
    no_input = Example(instruction="Name a colour.", response="Blue.")
    assert apply_template("alpaca", "instruction", no_input, "<s>", "</s>") == (
        "<s>Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue.</s>")
    with_input = Example(instruction="Add the numbers.", input="2, 3", response="5")
    assert apply_template("alpaca", "instruction", with_input, "", "<eos>") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
        "### Input:\n2, 3\n\n### Response:\n5<eos>")


def test_pavlyshenko_template_and_input_in_other_templates() -> None:
    ex = Example(instruction="Identify the odd one out.", input="Twitter, Instagram, Telegram", response="Telegram")
    assert apply_template("llama_inst_alpaca", "instruction", ex, "<s>", "</s>") == (
        "<s>[INST] Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\nIdentify the odd one out. Twitter, Instagram, Telegram [/INST]\nTelegram</s>")
    assert apply_template("llama_inst", "instruction", ex, "<s>", "</s>") == (
        "<s>[INST] Identify the odd one out.\nTwitter, Instagram, Telegram [/INST] Telegram </s>")
    assert apply_template("plain", "instruction", Example(instruction="Q?", response="A."), "<s>", "</s>") == (
        "<s>Question: Q?\nAnswer: A.</s>")  # no input: unchanged


def test_split_hash_of_input_less_examples_is_unchanged() -> None:
    examples = [Example(instruction=f"Q{i}?", response=f"A{i}.") for i in range(20)]
    split = split_examples(examples, 42, 2, "x")
    old = hashlib.sha256("\x1e".join(f"{e.text}\x1f{e.instruction}\x1f{e.response}" for e in split.heldout).encode())
    assert split.raw_sha256 == old.hexdigest()


# --------------------------------------------------------------------------- hub presets on local copies


def _load_preset(preset: str, folder: Path) -> list[Example]:
    """The preset as composed, its hub_id pointed at a local folder of the same schema."""
    return load_examples(_one(f"dataset={preset}", f"dataset.hub_id={folder}").dataset)


def _jsonl(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_alpaca_preset_loads_a_local_copy_with_input(tmp_path: Path) -> None:
    filler = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}", "text": "unused"} for i in range(4)]
    folder = _jsonl(tmp_path / "alpaca", "train.jsonl", ALPACA_ROWS + filler)
    out = _load_preset("alpaca", folder)
    assert len(out) == 6
    assert (out[1].instruction, out[1].input, out[1].response) == (
        "Identify the odd one out.", "Twitter, Instagram, Telegram", "Telegram")
    assert out[0].input == "" and out[2].input == ""
    assert [apply_template("alpaca", "instruction", e, "", "") for e in out[:2]] == [r["text"] for r in ALPACA_ROWS]


def test_sst2_preset_trains_on_class_names(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"idx": datasets.Value("int32"), "sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"idx": [0, 1, 2], "sentence": ["dull and slow", "a joy", "unlabelled"], "label": [0, 1, -1]}
    (tmp_path / "sst2" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "sst2" / "data" / "train.parquet")
    out = _load_preset("sst2", tmp_path / "sst2")
    assert [(e.instruction, e.response) for e in out] == [("dull and slow", "negative"), ("a joy", "positive")]


@pytest.mark.parametrize("preset,row,expected", [
    ("samsum", {"id": "1", "dialogue": "Ann: hi\nBob: hello", "summary": "They greet."},
     ("Ann: hi\nBob: hello", "They greet.")),
    ("newsgroups", {"text": "GPU prices are up", "label": 3, "label_text": "comp.sys.ibm.pc.hardware"},
     ("GPU prices are up", "comp.sys.ibm.pc.hardware")),
    ("magicoder", {"lang": "python", "seed": "x", "problem": "Sum a list.", "solution": "sum(xs)"},
     ("Sum a list.", "sum(xs)")),
    ("instruct_v3", {"prompt": "Explain tides.", "response": "The moon.", "source": "dolly_hhrlhf"},
     ("Explain tides.", "The moon.")),
])
def test_task_presets_read_their_columns(tmp_path: Path, preset: str, row: dict[str, Any],
                                         expected: tuple[str, str]) -> None:
    folder = _jsonl(tmp_path / preset, "train.jsonl", [row] * 3)
    out = _load_preset(preset, folder)
    assert len(out) == 3 and (out[0].instruction, out[0].response) == expected
