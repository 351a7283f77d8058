"""Task scores of one model on a fixed held-out subset: classification accuracy and macro-F1 (the
label chosen by the model's likelihood of each class name, so nothing is parsed from free text),
and exact match and ROUGE-1/2/L of greedy generations against the reference answers.

The scores are pure functions of (prediction, reference) pairs (:func:`classification_scores`,
:func:`generation_scores`), so they are tested on hand-made examples; the model-facing half
(:func:`class_logprobs`, :func:`greedy_answers`) feeds them. Which examples were scored (indices
into the held-out split, their SHA-256), the decoding and every per-example output are returned
for the run's ``evals/`` record.

Which evaluators exist and which scores each records is declared in
:mod:`repeatability.config.evaluators`; :data:`IMPLEMENTATIONS` runs each of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from repeatability.config import evaluators as declared
from repeatability.records.metrics import NAME as N

CLASS_SCORING = ("sum of the natural-log probabilities of the class name's tokens and the end-of-answer "
                 "marker after the prompt (the template's answer with that class as the response); the "
                 "class with the highest sum is the prediction")
EXACT_MATCH_RULE = ("exact match after SQuAD normalisation: lower case, punctuation and the articles "
                    "a/an/the removed, whitespace collapsed")
ROUGE_RULE = "ROUGE-1/2/L F-measure (rouge-score, Porter stemmer), mean over examples"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scores (pure)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def classification_scores(predicted: list[str], gold: list[str], classes: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn; every class in ``classes`` counts, a class never
    predicted has F1 0) of predicted against gold labels."""
    from sklearn.metrics import accuracy_score, f1_score

    if not gold:
        return {N.accuracy: float("nan"), N.macro_f1: float("nan")}
    return {N.accuracy: float(accuracy_score(gold, predicted)),
            N.macro_f1: float(f1_score(gold, predicted, labels=classes, average="macro", zero_division=0))}


GENERATION_SCORES = declared.score_names("generation")
ROUGE_TYPES = (N.rouge1, N.rouge2, N.rougeL)  # rouge-score's names of these F-measures are the scores' names
PER_EXAMPLE_KEPT = (N.exact_match, N.rougeL)  # what evals/tasks.json keeps per example


def generation_per_example(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """Each example's exact match and ROUGE-1/2/L F-measure, scored once (one ``RougeScorer``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out = []
    for pred, ref in zip(predictions, references):
        rouge = scorer.score(ref, pred)
        out.append({N.exact_match: float(normalize_answer(pred) == normalize_answer(ref)),
                    **{k: float(rouge[k].fmeasure) for k in ROUGE_TYPES}})
    return out


def mean_generation_scores(per_example: list[dict[str, float]]) -> dict[str, float]:
    """Means over examples of :func:`generation_per_example` (NaN without examples)."""
    if not per_example:
        return {k: float("nan") for k in GENERATION_SCORES}
    return {k: float(np.mean([e[k] for e in per_example])) for k in GENERATION_SCORES}


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match and ROUGE-1/2/L F-measure (means over examples) of generated answers."""
    return mean_generation_scores(generation_per_example(predictions, references))


# --------------------------------------------------------------------------- the fixed subset


@dataclass(frozen=True)
class TaskExample:
    """One scored example: the prompt as fed (template applied, answer left out), its reference,
    and (classification) the full templated text of the prompt answered with each class."""

    index: int  # position in the held-out split (or the training split, for few-shot examples)
    prompt: str
    reference: str
    options: tuple[str, ...] = ()
    solved: str = ""  # the prompt answered with its reference, as trained (few-shot examples)


@dataclass(frozen=True)
class TaskInputs:
    """What the evaluators need of one run's data, fixed before training."""

    examples: list[TaskExample]
    classes: list[str]
    stop: str  # the template's end of an answer
    shots: list[TaskExample]  # solved training examples for the few-shot baseline

    def prefix(self, k: int) -> str:
        return "".join(e.solved + "\n" for e in self.shots[:k])


def build_inputs(heldout: list[Any], train: list[Any], template_fn: Any, classes: list[str], n: int | None,
                 k: int, seed: int) -> TaskInputs:
    """The fixed subset of the held-out split (seeded by the split seed) and ``k`` few-shot examples
    (a seeded sample of the training split). ``template_fn(example, response, prompt_only)`` is the
    dataset's template (:func:`repeatability.trial.data.apply_template` bound to the run's model)."""
    from dataclasses import replace

    def as_task(i: int, e: Any) -> TaskExample:
        options = tuple(template_fn(replace(e, response=c), False) for c in classes)
        return TaskExample(i, template_fn(e, True), e.response, options, template_fn(e, False))

    examples = [as_task(i, heldout[i]) for i in select_subset(len(heldout), n, seed)]
    shots = [as_task(i, train[i]) for i in select_subset(len(train), min(k, len(train)), seed + 1)]
    marker = template_fn(replace(train[0] if train else heldout[0], response="\x00"), False)
    return TaskInputs(examples, classes, marker.split("\x00", 1)[1].strip(), shots)


def select_subset(n_heldout: int, n: int | None, seed: int) -> list[int]:
    """The held-out indices scored: all, or a seeded sample of ``n`` kept in split order."""
    if n is None or n >= n_heldout:
        return list(range(n_heldout))
    return sorted(random.Random(seed).sample(range(n_heldout), n))


def subset_sha256(examples: list[TaskExample]) -> str:
    """SHA-256 of the scored prompts and references (the same subset in every run of a study)."""
    payload = json.dumps([[e.index, e.prompt, e.reference] for e in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------- the model's side


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def class_logprobs(model: Any, tokenizer: Any, prompts: list[str], answers: list[list[str]], batch_size: int,
                   device: str) -> np.ndarray:
    """``[example, class]`` log-probability of each full answer text (``answers[i][c]``: the
    templated answer for class ``c``, starting with ``prompts[i]``) after its prompt.

    Scored as NLL(prompt) − NLL(prompt + answer) through the held-out scorer
    (:func:`repeatability.trial.evaluate.sequence_nll`); where tokenisation merges across the
    prompt's end, the shared token prefix is the context.
    """
    from repeatability.trial.evaluate import sequence_nll

    seqs: list[list[int]] = []
    context_of: list[int] = []  # each answer's context, scored once however many answers share it
    contexts: dict[tuple[int, ...], int] = {}
    for prompt, options in zip(prompts, answers):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for text in options:
            full = tokenizer(text, add_special_tokens=False)["input_ids"]
            seqs.append(full)
            context_of.append(contexts.setdefault(tuple(full[: max(1, _common_prefix(p_ids, full))]), len(contexts)))
    full_nll = sequence_nll(model, seqs, tokenizer.pad_token_id, batch_size, device)
    ctx_nll = sequence_nll(model, [list(c) for c in contexts], tokenizer.pad_token_id, batch_size, device)
    scores = np.array([ctx_nll[c][0] - f[0] for f, c in zip(full_nll, context_of)], dtype=np.float64)
    n_classes = len(answers[0]) if answers else 0
    return scores.reshape(len(prompts), n_classes)


def greedy_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, stop: str,
                   device: str) -> list[str]:
    """Greedy completions of each prompt (new tokens only), cut at ``stop`` (the template's end of
    an answer) or the end-of-sequence token, whichever comes first, and stripped."""
    import torch

    model.eval()
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if stop:
        ids = tokenizer(stop, add_special_tokens=False)["input_ids"]
        stop_ids += ids[:1] if len(ids) == 1 else []
    ends = [m for m in (stop, tokenizer.eos_token) if m]
    out = []
    with torch.no_grad():
        for prompt in prompts:
            enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids or None)
            text = tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
            for marker in ends:
                text = text.split(marker)[0]
            out.append(text.strip())
    return out


@dataclass(frozen=True)
class Job:
    """What each evaluator is given: the model, the fixed subset and the text before each prompt
    (solved training examples for the few-shot baseline, else empty)."""

    model: Any
    tokenizer: Any
    inputs: TaskInputs
    prefix: str
    max_new_tokens: int
    batch_size: int
    device: str

    def prompts(self) -> list[str]:
        return [self.prefix + e.prompt for e in self.inputs.examples]


def _classify(job: Job) -> tuple[dict[str, float], dict[str, Any]]:
    start = time.perf_counter()
    examples, classes = job.inputs.examples, job.inputs.classes
    answers = [[job.prefix + o for o in e.options] for e in examples]
    lp = class_logprobs(job.model, job.tokenizer, job.prompts(), answers, job.batch_size, job.device)
    predicted = [classes[int(i)] for i in lp.argmax(axis=1)] if len(examples) else []
    scores = classification_scores(predicted, [e.reference for e in examples], classes)
    return scores, {
        "classes": classes, "scoring": CLASS_SCORING, "seconds": round(time.perf_counter() - start, 3),
        "examples": [{"index": e.index, "reference": e.reference, "predicted": p,
                      "logprobs": [round(float(x), 6) for x in row]}
                     for e, p, row in zip(examples, predicted, lp)]}


def _generate(job: Job) -> tuple[dict[str, float], dict[str, Any]]:
    start = time.perf_counter()
    examples, stop = job.inputs.examples, job.inputs.stop
    predictions = greedy_answers(job.model, job.tokenizer, job.prompts(), job.max_new_tokens, stop, job.device)
    per_example = generation_per_example(predictions, [e.reference for e in examples])
    return mean_generation_scores(per_example), {
        "decoding": "greedy", "max_new_tokens": job.max_new_tokens, "stop": stop,
        "exact_match_rule": EXACT_MATCH_RULE, "rouge_rule": ROUGE_RULE,
        "seconds": round(time.perf_counter() - start, 3),
        "examples": [{"index": e.index, "prompt": e.prompt, "reference": e.reference, "prediction": p,
                      **{k: scored[k] for k in PER_EXAMPLE_KEPT}}
                     for e, p, scored in zip(examples, predictions, per_example)]}


@dataclass(frozen=True)
class Implementation:
    """How an evaluator declared in :mod:`repeatability.config.evaluators` runs."""

    run: Callable[[Job], tuple[dict[str, float], dict[str, Any]]]  # its scores and its part of evals/tasks.json
    settings: Callable[[Any, TaskInputs], dict[str, Any]]  # its fields of the summary's ``tasks`` group


IMPLEMENTATIONS: dict[str, Implementation] = {
    "classification": Implementation(_classify, lambda cfg, inputs: {"classes": list(inputs.classes),
                                                                     "class_scoring": CLASS_SCORING}),
    "generation": Implementation(_generate, lambda cfg, inputs: {"decoding": "greedy",
                                                                 "max_new_tokens": cfg.eval.task_max_new_tokens}),
}


def _in_order(evaluators: list[str]) -> list[str]:
    """The asked evaluators in declaration order (the order of the records and summaries)."""
    return [name for name in declared.NAMES if name in evaluators]


def run_tasks(model: Any, tokenizer: Any, evaluators: list[str], inputs: TaskInputs, *, max_new_tokens: int,
              batch_size: int, device: str, shots: int = 0) -> tuple[dict[str, float], dict[str, Any]]:
    """Scores and the per-example record of every evaluator on the fixed subset; ``shots`` solved
    training examples go before each prompt (the few-shot baseline)."""
    examples = inputs.examples
    job = Job(model, tokenizer, inputs, inputs.prefix(shots), max_new_tokens, batch_size, device)
    scores: dict[str, float] = {}
    record: dict[str, Any] = {"n_examples": len(examples), "subset_sha256": subset_sha256(examples),
                              "indices": [e.index for e in examples], "shots": shots,
                              "shot_indices": [e.index for e in inputs.shots[:shots]]}
    for name in _in_order(evaluators):
        part_scores, record[name] = IMPLEMENTATIONS[name].run(job)
        scores.update(part_scores)
    return scores, record


# --------------------------------------------------------------------------- the run's stage


def baselines(cfg: Any, model: Any, tokenizer: Any, inputs: TaskInputs, cache: Any, device: str) -> dict[str, Any]:
    """The base model scored with the run's evaluators, zero-shot and/or with ``eval.few_shot_k``
    solved training examples: once per study (``cache``: the study's ``_base/`` file for this
    model, subset and settings), then read back by every run."""
    from repeatability.records import artifacts

    if cache.exists():
        return artifacts.read_json(cache)
    out: dict[str, Any] = {}
    for kind in cfg.eval.baselines:
        shots = cfg.eval.few_shot_k if kind == "few_shot" else 0
        log.info("scoring the base model %s (%d shots) on %d task examples (once per study)", kind, shots,
                 len(inputs.examples))
        start = time.perf_counter()
        scores, record = run_tasks(model, tokenizer, list(cfg.eval.tasks), inputs, shots=shots, device=device,
                                   max_new_tokens=cfg.eval.task_max_new_tokens, batch_size=cfg.eval.batch_size)
        out[kind] = {"scores": scores, "shots": shots, "shot_indices": record["shot_indices"],
                     "seconds": round(time.perf_counter() - start, 3), "outputs": record}
    artifacts.write_json(cache, out)
    return out


def summary_group(cfg: Any, inputs: TaskInputs, record: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The summary's ``tasks`` group (:class:`repeatability.records.summary.Tasks`)."""
    group: dict[str, Any] = {"evaluators": list(cfg.eval.tasks), "n_examples": record["n_examples"],
                             "subset_sha256": record["subset_sha256"], "outputs": "evals/tasks.json"}
    for name in _in_order(list(cfg.eval.tasks)):
        group.update(IMPLEMENTATIONS[name].settings(cfg, inputs))
    if "zero_shot" in base:
        group["zero_shot"] = base["zero_shot"]["scores"]
    if "few_shot" in base:
        group.update(few_shot=base["few_shot"]["scores"], few_shot_k=base["few_shot"]["shots"],
                     few_shot_indices=base["few_shot"]["shot_indices"])
    return group
