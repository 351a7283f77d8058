"""Bundled and hub-shaped datasets, the fixed split, templates and dynamic padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repeatability.config.cell import DatasetConfig
from repeatability.trial.data import Example, PadCollator, apply_template, load_examples, split_examples


def test_bundled_quotes_are_english_quotes_like() -> None:
    cfg = DatasetConfig(name="quotes", source="fortune", kind="text", max_chars=300, max_examples=2500)
    quotes = load_examples(cfg)
    assert len(quotes) == 2500
    assert all(len(q.text) <= 300 and "\n" not in q.text and not q.text.lstrip().startswith("--") for q in quotes)
    assert not any(q.text.rstrip().endswith(("-- Mark Twain",)) for q in quotes)
    assert [q.text for q in load_examples(cfg)] == [q.text for q in quotes]  # deterministic selection


def test_bundled_qa_pairs() -> None:
    pairs = load_examples(DatasetConfig(name="qa", source="chatterbot", kind="instruction"))
    assert len(pairs) > 1500
    assert any(p.instruction == "What is AI?" for p in pairs)


def test_split_is_80_20_and_the_same_for_every_trial() -> None:
    ex = [Example(text=f"quote {i}") for i in range(100)]
    a, b = split_examples(ex, 42, 5, "x"), split_examples(ex, 42, 5, "x")
    assert (len(a.train), len(a.val), len(a.heldout)) == (75, 5, 20)
    assert a.raw_sha256 == b.raw_sha256 and [e.text for e in a.heldout] == [e.text for e in b.heldout]
    assert not {e.text for e in a.heldout} & {e.text for e in a.train + a.val}
    assert split_examples(ex, 43, 5, "x").raw_sha256 != a.raw_sha256


def test_paper_templates() -> None:
    ex = Example(instruction="Q?", response="A.")
    assert apply_template("llama_inst", "instruction", ex, "<s>", "</s>") == "<s>[INST] Q? [/INST] A. </s>"
    assert apply_template("llama_inst", "instruction", ex, "<s>", "</s>", prompt_only=True) == "<s>[INST] Q? [/INST]"
    assert (apply_template("neoxt_human", "instruction", ex, "", "<|endoftext|>")
            == "<human>: Q?\n<bot>: A.<|endoftext|>")
    assert (apply_template("chatml", "text", Example(text="Hi"), "<|endoftext|>", "<|im_end|>")
            == "<|endoftext|>Hi<|im_end|>")


def test_collator_pads_dynamically_and_keeps_eos_equal_to_pad() -> None:
    batch = PadCollator(pad_id=2)([{"input_ids": [5, 6, 2]}, {"input_ids": [7, 2]}])
    assert batch["input_ids"].tolist() == [[5, 6, 2], [7, 2, 2]]  # width = longest, not max_length
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 2], [7, 2, -100]]  # the EOS (id 2 = pad) is a target


def test_english_quotes_loader_on_a_local_copy(tmp_path: Path) -> None:
    """The hub preset's real load_dataset call, pointed at a folder of the same schema."""
    folder = tmp_path / "english_quotes"
    folder.mkdir()
    rows = [{"quote": f"“Quote number {i}.”", "author": "Someone", "tags": ["x"]} for i in range(30)]
    (folder / "quotes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig(name="english_quotes", source="hub", hub_id=str(folder), kind="text", text_field="quote")
    out = load_examples(cfg)
    assert [e.text for e in out] == [r["quote"] for r in rows]  # author and tags dropped


def test_open_platypus_loader_on_a_local_copy(tmp_path: Path) -> None:
    import pandas as pd

    folder = tmp_path / "open_platypus" / "data"
    folder.mkdir(parents=True)
    pd.DataFrame({"input": [""] * 10, "output": [f"B{i}" for i in range(10)],
                  "instruction": [f"Q{i}?" for i in range(10)],
                  "data_source": ["reclor"] * 10}).to_parquet(folder / "train-00000-of-00001.parquet")
    cfg = DatasetConfig(name="open_platypus", source="hub", hub_id=str(folder.parent), kind="instruction",
                        instruction_field="instruction", response_field="output")
    out = load_examples(cfg)
    assert (out[3].instruction, out[3].response) == ("Q3?", "B3")


def test_local_csv_with_missing_column(tmp_path: Path) -> None:
    from repeatability.config.errors import ConfigError

    (tmp_path / "d.csv").write_text("body\nhello\nworld\n")
    with pytest.raises(ConfigError, match="column\\(s\\) text not found \\(has body\\)"):
        load_examples(DatasetConfig(name="local", source="local", path=str(tmp_path / "d.csv"), text_field="text"))
