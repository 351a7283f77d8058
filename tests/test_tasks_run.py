"""Task evaluators in a real (tiny) run: the summary's task scores and baselines, evals/tasks.json,
NEFTune recorded; NEFTune's noise reaches the embeddings in training only; bad task input refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, tiny_overrides

from repeatability.config.cell import DatasetConfig
from repeatability.config.errors import ConfigError
from repeatability.config.run import EvalConfig, to_run_config
from repeatability.launching import preflight
from repeatability.records import artifacts, eval_records, integrity
from repeatability.trial import data, tasks

CLASSES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def labelled_jsonl(tmp_path_factory) -> str:
    """60 instruction examples whose answer is one of three class names."""
    path = tmp_path_factory.mktemp("data") / "labelled.jsonl"
    rows = [{"instruction": f"Which word comes after number {i}?", "output": CLASSES[i % 3]} for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def task_run(tiny_model_dir, labelled_jsonl, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    args = tiny_overrides(tiny_model_dir, labelled_jsonl, results, **{
        "dataset.kind": "instruction", "model.template": "plain", "eval.tasks": "[classification,generation]",
        "eval.baselines": "[zero_shot,few_shot]", "eval.task_examples": 6, "eval.few_shot_k": 2,
        "eval.task_max_new_tokens": 4, "train.neftune_noise_alpha": 5})
    assert run_cli(["trial=1", "optim=paged_adamw_32bit", "study=t", *args]) == 0
    [run] = list((results / "t").glob("*/trial-01"))
    return run


@pytest.mark.slow
def test_run_records_task_scores_baselines_and_outputs(task_run) -> None:
    s = artifacts.read_summary(task_run)
    m, t = s["metrics"], s["tasks"]
    for key in ("accuracy", "macro_f1", "exact_match", "rouge1", "rouge2", "rougeL"):
        assert 0.0 <= m[key] <= 1.0, key
        assert 0.0 <= t["zero_shot"][key] <= 1.0 and 0.0 <= t["few_shot"][key] <= 1.0
    assert t["classes"] == CLASSES and t["n_examples"] == 6 and t["few_shot_k"] == 2 and len(t["few_shot_indices"]) == 2
    assert t["decoding"] == "greedy" and t["max_new_tokens"] == 4 and "probabilities" in t["class_scoring"]
    assert s["neftune"]["noise_alpha"] == 5 and "training steps only" in s["neftune"]["scope"]
    assert s["timings"]["tasks_s"] > 0
    record = eval_records.read_eval(task_run, "tasks")
    assert record["metrics"]["accuracy"] == m["accuracy"] and record["subset_sha256"] == t["subset_sha256"]
    rows = record["classification"]["examples"]
    assert len(rows) == 6 and all(len(r["logprobs"]) == 3 for r in rows)
    # the recorded predictions give the recorded accuracy
    assert sum(r["predicted"] == r["reference"] for r in rows) / 6 == pytest.approx(m["accuracy"])
    assert all(r["predicted"] == CLASSES[max(range(3), key=lambda c: r["logprobs"][c])] for r in rows)
    gen = record["generation"]["examples"]
    assert len(gen) == 6 and all(set(r) >= {"prediction", "reference", "exact_match", "rougeL"} for r in gen)
    assert integrity.verify_manifest(task_run)  # evals/tasks.json was written before DONE: covered


def test_neftune_noise_only_in_training() -> None:
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(10, 8)
    model.get_input_embeddings = lambda: model.emb
    ids = torch.tensor([[1, 2, 3]])
    clean = model.emb(ids).detach()
    handle = activate_neftune(model, 5.0)
    model.train()
    noisy = model.emb(ids).detach()
    bound = 5.0 / (3 * 8) ** 0.5
    assert not torch.equal(noisy, clean) and (noisy - clean).abs().max() <= bound + 1e-6
    model.eval()
    assert torch.equal(model.emb(ids).detach(), clean)  # evaluation and generation: no noise
    deactivate_neftune(model, handle)
    model.train()
    assert torch.equal(model.emb(ids).detach(), clean)  # after training: the hook is gone


def test_training_args_carry_neftune() -> None:
    from repeatability.config.run import TrainConfig
    from repeatability.trial import train
    from repeatability.trial.seeding import Seeds

    seeds = Seeds(lora_init=1, data_order=2, dropout=3, generation=4, split=42, policy="per_trial", rules={})
    args = train._training_args(TrainConfig(neftune_noise_alpha=5.0), seeds, "cpu", "no", "/tmp/x", 8, False)
    assert args.neftune_noise_alpha == 5.0
    assert train._training_args(TrainConfig(), seeds, "cpu", "no", "/tmp/x", 8, False).neftune_noise_alpha is None


def test_bad_task_input_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="eval.tasks"):
        EvalConfig(tasks=["accuracy"])
    with pytest.raises(ConfigError, match="set eval.tasks too"):
        EvalConfig(baselines=["zero_shot"])
    with pytest.raises(ConfigError, match="kind=text"):
        [cfg] = preflight.compose_jobs(["dataset=quotes", "eval.tasks=[classification]"], multirun=False)
        to_run_config(cfg)
    with pytest.raises(ConfigError, match="no preset conf/prompts/nope.yaml"):
        preflight.check(["eval.prompts=nope"], multirun=False)
    with pytest.raises(ConfigError, match="label_by=category needs"):
        DatasetConfig(name="x", source="chatterbot", kind="instruction", label_by="category")


def test_quote_topics_are_balanced_labelled_quotes() -> None:
    cfg = DatasetConfig(name="quote_topics", source="fortune", kind="instruction", label_by="category",
                        categories=["computers", "politics", "science", "work"], per_class=150, max_chars=300,
                        instruction_template="Which topic is this quote about: {classes}?\n{text}")
    examples = data.load_examples(cfg)
    counts = {c: sum(e.response == c for e in examples) for c in cfg.categories}
    assert counts == {c: 150 for c in cfg.categories}
    assert examples[0].instruction.startswith("Which topic is this quote about: computers, politics, science, work?\n")
    assert examples == data.load_examples(cfg)  # the seeded selection is fixed
    with pytest.raises(ConfigError, match="fortune category 'nope' does not exist"):
        data.load_examples(DatasetConfig(name="x", source="fortune", kind="instruction", label_by="category",
                                         categories=["nope"]))


def test_build_inputs_fixes_subset_options_stop_and_shots() -> None:
    heldout = [data.Example(instruction=f"q{i}", response=CLASSES[i % 3]) for i in range(20)]
    train_split = [data.Example(instruction=f"t{i}", response=CLASSES[i % 3]) for i in range(30)]

    def template(e, prompt_only):
        return data.apply_template("chatml", "instruction", e, "", "", prompt_only)

    inputs = tasks.build_inputs(heldout, train_split, template, CLASSES, 5, 2, seed=42)
    assert [e.index for e in inputs.examples] == tasks.select_subset(20, 5, 42)
    first = inputs.examples[0]
    assert first.prompt.endswith("<|im_start|>assistant\n") and first.options[1] == first.prompt + "beta<|im_end|>"
    assert inputs.stop == "<|im_end|>" and len(inputs.shots) == 2
    assert inputs.prefix(2) == "".join(e.solved + "\n" for e in inputs.shots) and inputs.prefix(0) == ""


@pytest.mark.slow
def test_rescore_computes_the_same_task_scores_for_a_finished_run(task_run) -> None:
    from repeatability import rescore

    [written] = rescore.rescore(task_run.parent.parent, "again", [])
    again = json.loads(written.read_text())
    summary = artifacts.read_summary(task_run)["metrics"]
    for key in ("accuracy", "macro_f1", "exact_match", "rouge1", "rougeL"):
        assert again["metrics"][key] == pytest.approx(summary[key], abs=1e-9), key
    assert again["tasks"]["subset_sha256"] == artifacts.read_summary(task_run)["tasks"]["subset_sha256"]
