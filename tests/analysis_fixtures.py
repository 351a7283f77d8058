"""Synthetic studies for the analysis tests, written only through the run-directory contract.

Each run gets every file the contract lists (a summary built from the typed schema in
``repeatability/records/summary.py`` with every field it requires, loss curve, generations,
environment, config, a real safetensors adapter) and is marked DONE by ``integrity.mark_done``,
so a change in the contract breaks these fixtures first.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from repeatability.records import adapter_files, artifacts, curve_files, integrity
from repeatability.records import run_setup as R
from repeatability.records import summary as S
from repeatability.records.schema import from_dict

# The paper's Tables 1 and 2 (Alahmari et al. 2024), perplexity per trial 1..7.
PAPER_TABLE1 = {
    ("gpt-neox-20b", "paged_adamw_8bit"): [21024, 3452, 3028, 5440, 1105, 790, 1780],
    ("gpt-neox-20b", "paged_adamw_32bit"): [8.039, 8.179, 8.257, 8.101, 8.391, 8.226, 8.703],
    ("llama2-7b-hf", "paged_adamw_8bit"): [165687.93, 12.471, 109585.75, 14.766, 185572.82,
                                           13.541, 233812.79],
    ("llama2-7b-hf", "paged_adamw_32bit"): [3.567, 3.561, 3.566, 3.566, 3.541, 3.379, 3.526],
}
PAPER_TABLE2 = {
    ("neoxt-chat-20b", "paged_adamw_8bit"): [3824, 6720, 2400, 3600, 1752, 14680, 5920],
    ("neoxt-chat-20b", "paged_adamw_32bit"): [6.531, 6.468, 6.531, 6.937, 6.468, 6.718, 6.562],
    ("llama2-chat-7b", "paged_adamw_8bit"): [6.667, 6.490, 145808, 77.938, 46649, 124091, 10769],
    ("llama2-chat-7b", "paged_adamw_32bit"): [5.365, 5.409, 5.374, 5.442, 5.500, 5.398, 5.320],
}
PROMPTS = ["Your silence will", "Let the improvement of yourself keep you"]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def seeds_for(trial: int, paired: bool = True, optim: str = "") -> dict[str, Any]:
    """Per-trial seeds; ``paired=False`` gives each arm its own (different) seeds."""
    salt = 0 if paired else sum(map(ord, optim))
    return {"lora_init": 1000 + trial + salt, "data_order": 2000 + trial + salt,
            "dropout": 3000 + trial + salt, "generation": 4000 + trial, "split": 42,
            "policy": "per_trial", "rules": {"lora_init": "trial", "data_order": "trial",
                                             "dropout": "trial", "generation": "trial"}}


def optimizer_record(optim: str, device: str = "cpu") -> R.Optimizer:
    """``summary.optimizer`` of a bitsandbytes arm, as the pipeline writes it."""
    bits = 8 if "8bit" in optim else 32
    paged = optim.startswith("paged")
    record = R.Optimizer(
        requested=R.OptimRequested(name=optim, impl="bnb_adamw", optim_bits=bits, is_paged=paged,
                                   min_8bit_size=4096, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0,
                                   state_maps="current", lr=2e-4),
        effective=R.OptimEffective(
            class_="bitsandbytes.optim.adamw.AdamW", bits=bits, paging_requested=paged,
            paging_effective=paged and device == "cuda",
            paging_note="paging requested but not in effect: bitsandbytes does not page on CPU"
            if paged and device == "cpu" else "", n_param_tensors=420, n_params=2441216,
            state_8bit_tensors=420 if bits == 8 else 0, state_8bit_params=2441216 if bits == 8 else 0,
            state_8bit_param_fraction=1.0 if bits == 8 else 0.0,
            state_dtypes={"uint8" if bits == 8 else "float32": 840}),
        state_maps=R.StateMaps(requested="current", name="current" if bits == 8 else "none (no 8-bit state)",
                               maps={}),
    )
    return record


def base_summary(cell: artifacts.CellKey, trial: int, study: str, ppl: float) -> dict[str, Any]:
    """A finished run's summary with every field the schema requires (checked), as JSON."""
    record = S.Summary(
        schema_version=S.SCHEMA_VERSION, headline=f"Trial {trial} of {cell.dirname}: complete after 10 steps.",
        status="complete", study=study, trial=trial,
        cell=R.Cell(model=cell.model, dataset=cell.dataset, optim=cell.optim, variant=cell.variant),
        seeds=from_dict(R.Seeds, seeds_for(trial)),
        determinism=R.Determinism(
            mode="default", use_deterministic_algorithms=False, cudnn_deterministic=True, cudnn_benchmark=False,
            CUBLAS_WORKSPACE_CONFIG=None, FLASH_ATTENTION_DETERMINISTIC=None, cuda_initialised_before_flags=False,
            torch_num_threads=2, thread_budget=R.ThreadBudget(threads=2, cores=2, parallel_jobs=1, source="machine")),
        optimizer=optimizer_record(cell.optim),
        precision=R.Precision(compute_dtype="float32", mixed_precision="no", autocast=False, grad_scaler=False,
                              scaler_skipped_steps=0, scaler_skipped_at=[], final_loss_scale=None),
        device=R.Device(type="cpu", name="AMD EPYC", compute_dtype="float32",
                        quantization=R.Quantization(name="nf4", load_in_4bit=True, quant_type="nf4",
                                                    double_quant=True, mixed_precision="auto"),
                        n_4bit_layers=210, bnb_cpu_inference_repack="disabled"),
        model=R.Model(name=cell.model, source="gguf_package", resolved="/cache/x", architecture="llama",
                      n_params=134515008, n_params_note="as stored", n_trainable_params=2441216,
                      lora=R.Lora(r=8, alpha=32, dropout=0.05, targets="all_linear",
                                  target_modules=["q_proj", "v_proj"])),
        data=R.Data(dataset=cell.dataset, source="fortune", kind="text", template="plain (bos + text + eos)",
                    bos="<s>", eos="</s>", n_total=400, n_train=288, n_val=32, n_heldout=80, n_heldout_scored=80,
                    split_seed=42, heldout_raw_sha256="cd" * 32, heldout_sha256="ab" * 32,
                    heldout_file="_splits/abab.jsonl", max_length=64),
        metrics=S.Metrics(perplexity_token_weighted=ppl, perplexity_mean_per_sequence=ppl * 1.5,
                          heldout_mean_token_nll=math.log(ppl) if ppl > 0 else math.nan,
                          heldout_tokens=2000, heldout_sequences=80, base_perplexity_token_weighted=64.0,
                          base_perplexity_mean_per_sequence=90.0, base_perplexity_repeats=[64.0],
                          base_perplexity_repeat_spread=0.0, final_train_loss=3.0, final_val_loss=3.2, steps=10),
        perplexity_definition="token-weighted: exp(sum nll / N tokens); mean per sequence: mean_s exp(mean nll of s)",
        timings=S.Timings(model_load_s=3.0, train_s=100.0 + trial, eval_s=10.0 + trial / 10, generation_s=5.0,
                          total_s=120.0, step_s_mean=2.2, step_s_median=2.1),
        memory=S.Memory(peak_rss_mb=1500.0 + trial, process_max_rss_mb=1600.0),
        adapter=S.Adapter(path="adapter", sha256=None), resumed=None,
        checkpointing=S.Checkpointing(every=0.25, saved=[], kept=False),
        divergence=None, error=None, tracking=None,
        started_at="2026-11-22T10:00:00Z", finished_at="2026-11-22T10:02:00Z",
    )
    assert S.required_missing(record) == [], S.required_missing(record)
    return S.dump(record)


def loss_rows(losses: list[float], eval_every: int = 5) -> list[dict[str, Any]]:
    rows = [{"step": i, "epoch": i / len(losses), "split": "train", "loss": loss,
             "learning_rate": 2e-4, "grad_norm": 1.0, "elapsed_s": 2.0 * i}
            for i, loss in enumerate(losses, 1)]
    rows += [{"step": i, "epoch": i / len(losses), "split": "val", "loss": losses[i - 1] + 0.2,
              "elapsed_s": 2.0 * i} for i in range(eval_every, len(losses) + 1, eval_every)]
    return rows


def generation_rows(completions: list[str], letters: list[str | None] | None = None,
                    prompts: list[str] | None = None) -> list[dict[str, Any]]:
    """One greedy and one sampled row per prompt; the sampled text gets a suffix."""
    prompts = prompts or PROMPTS
    rows = []
    for i, (prompt, text) in enumerate(zip(prompts, completions)):
        letter = letters[i] if letters else None
        for mode, seed, suffix in (("greedy", None, ""), ("sampled", 7, " (s)")):
            rows.append({"prompt_index": i, "prompt": prompt, "mode": mode, "seed": seed,
                         "temperature": 0.1, "top_p": 0.1, "max_new_tokens": 32,
                         "completion": text + suffix, "text": f"{prompt} {text}{suffix}",
                         "answer_letter": letter})
    return rows


def write_adapter(path: Path, weight_seed: int, tensors: dict[str, np.ndarray] | None = None,
                  config: dict[str, Any] | None = None) -> str:
    """A small real safetensors adapter; equal ``weight_seed`` → byte-identical file.

    ``tensors``/``config`` replace the default single random tensor and ``{r: 8, lora_alpha: 32}``.
    """
    weights = adapter_files.adapter_weights_path(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(weight_seed)
    if tensors is None:
        tensors = {"lora_A": rng.standard_normal((8, 16)).astype(np.float32)}
    save_file(tensors, str(weights))
    artifacts.write_json(weights.parent / artifacts.ADAPTER_CONFIG, config or {"r": 8, "lora_alpha": 32})
    return adapter_files.adapter_sha256(path)


# Keys that summaries written by early versions of the harness (schema 1) do not have.
EARLY_SCHEMA1_ABSENT = (("precision",), ("optimizer", "state_maps"), ("determinism", "thread_budget"),
                        ("checkpointing",), ("resumed",), ("tracking",))


def early_schema1(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` as an early schema-1 run wrote it: version 1, without the later keys."""
    out = copy.deepcopy(summary)
    for *parents, key in EARLY_SCHEMA1_ABSENT:
        node = out
        for parent in parents:
            node = node.get(parent, {})
        node.pop(key, None)
    out["schema_version"] = 1
    return out


def write_run(results: Path, study: str, cell: artifacts.CellKey, trial: int, *,
              ppl: float = 10.0, status: str = "complete", losses: list[float] | None = None,
              completions: list[str] | None = None, letters: list[str | None] | None = None,
              weight_seed: int | None = None, summary: dict[str, Any] | None = None,
              env: dict[str, Any] | None = None, generations: list[dict[str, Any]] | None = None,
              adapter: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
              schema1: bool = False) -> Path:
    """Write one run through the contract. ``status``: complete | diverged | failed | incomplete.

    ``summary`` is deep-merged over :func:`base_summary` (e.g. other seeds, a schema version);
    ``generations`` replaces the rows of :func:`generation_rows`; ``adapter`` is (tensors,
    adapter_config) for :func:`write_adapter`; ``schema1`` stores the summary as an early
    schema-1 run did (:func:`early_schema1`: what the reader must still load).
    """
    path = artifacts.run_dir(results, study, cell, trial)
    artifacts.start_fresh(path)
    losses = losses if losses is not None else [3.0 - 0.1 * i + 0.01 * trial for i in range(10)]
    curve_files.write_loss_curve(path, loss_rows(losses))
    if status == "incomplete":
        return path
    artifacts.write_generations(path, generations if generations is not None else generation_rows(
        completions or [f"text {trial}"] * 2, letters))
    artifacts.write_environment(path, deep_merge(
        {"python": "3.11.7", "packages": {"torch": "2.13.0"}, "cuda": {"available": False},
         "git": {"commit": "abc"}}, env or {}))
    artifacts.write_config(path, f"study: {study}\ntrial: {trial}\n", [f"trial={trial}"])
    record = deep_merge(base_summary(cell, trial, study, ppl), summary or {})
    record["status"] = status
    if status != "failed":
        record["adapter"]["sha256"] = write_adapter(path, weight_seed if weight_seed is not None
                                                    else trial, *(adapter or ()))
    artifacts.write_summary(path, record)
    # files of another schema version, as found on disk (the writer only writes the current one)
    if schema1:
        artifacts.write_json(path / artifacts.SUMMARY, early_schema1(artifacts.read_json(path / artifacts.SUMMARY)))
    elif record["schema_version"] != S.SCHEMA_VERSION:
        artifacts.write_json(path / artifacts.SUMMARY, record)
    if status == "failed":
        artifacts.write_error(path, "Traceback ...\nRuntimeError: out of memory\n")
    else:
        integrity.mark_done(path)
    return path


def write_paper_study(results: Path, study: str = "paper", paired: bool = True) -> Path:
    """The paper's Tables 1 (quotes) and 2 (platypus) as a study of 56 complete runs."""
    for dataset, table in (("quotes", PAPER_TABLE1), ("platypus", PAPER_TABLE2)):
        for (model, optim), values in table.items():
            cell = artifacts.CellKey(model, dataset, optim)
            for trial, value in enumerate(values, 1):
                write_run(results, study, cell, trial, ppl=value,
                          summary={"seeds": seeds_for(trial, paired, optim)})
    return artifacts.study_dir(results, study)


SMOL_8 = artifacts.CellKey("smollm2-135m", "quotes", "paged_adamw_8bit")
SMOL_32 = artifacts.CellKey("smollm2-135m", "quotes", "paged_adamw_32bit")
SMOL_FIXED = artifacts.CellKey("smollm2-135m", "quotes", "paged_adamw_32bit", "fixedseed")
MIXED_PPL_8 = [20.0, 25.0, 40.0]
MIXED_PPL_32 = [18.0, 19.0, 20.5]


def write_mixed_study(results: Path, study: str = "mixed") -> Path:
    """Every kind of run the analysis must cope with, in three cells.

    - ``SMOL_8``: trials 1–3 complete (ppl 20, 25, 40); 4 diverged (ppl inf at step 7);
      5 complete but its summary is corrupted afterwards.
    - ``SMOL_32``: trials 1–3 complete (ppl 18, 19, 20.5), seed-matched with ``SMOL_8``,
      trial 3 under another torch (2.12.0);
      4 failed (MemoryError); 5 half-finished; 6 complete with an unknown schema version.
    - ``SMOL_FIXED``: trials 1–3 with the same seeds, adapter and text: bitwise repeatable.
    """
    for trial, ppl in enumerate(MIXED_PPL_8, 1):
        write_run(results, study, SMOL_8, trial, ppl=ppl, completions=[f"quiet {trial}", "busy"])
    write_run(results, study, SMOL_8, 4, ppl=math.inf, status="diverged",
              losses=[3.0, 2.9, 2.8, 5.0, 40.0, 900.0, math.nan],
              summary={"divergence": {"reason": "loss is NaN", "step": 7, "last_loss": math.nan},
                       "metrics": {"perplexity_mean_per_sequence": math.inf}})
    broken = write_run(results, study, SMOL_8, 5, ppl=22.0)
    artifacts.write_text(broken / artifacts.SUMMARY, '{"status": "complete", "schema_')
    for trial, ppl in enumerate(MIXED_PPL_32, 1):
        write_run(results, study, SMOL_32, trial, ppl=ppl, completions=["quiet", "busy"],
                  env={"packages": {"torch": "2.12.0"}} if trial == 3 else None)
    write_run(results, study, SMOL_32, 4, status="failed",
              summary={"error": {"type": "MemoryError", "message": "cannot allocate 2 GB"}})
    write_run(results, study, SMOL_32, 5, status="incomplete")
    write_run(results, study, SMOL_32, 6, ppl=19.5, summary={"schema_version": 99})
    for trial in (1, 2, 3):
        write_run(results, study, SMOL_FIXED, trial, ppl=17.0, weight_seed=0,
                  losses=[3.0 - 0.1 * i for i in range(10)], completions=["same", "same"],
                  summary={"seeds": seeds_for(0)})
    return artifacts.study_dir(results, study)


def write_default_like_study(results: Path, study: str = "default", schema1: bool = False) -> Path:
    """The shape ``make study`` produces: smollm2 × quotes × {8, 32}-bit paged AdamW, trials
    1–7, seed-matched arms, CPU (paging requested, not effective); ``schema1``: as early
    schema-1 runs stored it."""
    for trial in range(1, 8):
        write_run(results, study, SMOL_8, trial, ppl=30.0 + trial * 0.37,
                  losses=[3.0 - 0.1 * i + 0.001 * trial * i for i in range(10)],
                  completions=[f"not protect you {trial % 3}", "busy"], schema1=schema1)
        write_run(results, study, SMOL_32, trial, ppl=30.0 + trial * 0.35,
                  losses=[3.0 - 0.1 * i + 0.001 * trial * i for i in range(9)] + [2.05],
                  completions=[f"not protect you {trial % 3}", "busy"], schema1=schema1)
    return artifacts.study_dir(results, study)


TASK_ACC_8 = [0.60, 0.62, 0.61, 0.63, 0.64]
TASK_ACC_32 = [0.61, 0.62, 0.62, 0.63, 0.64]  # paired differences -0.01, 0, -0.01, 0, 0
TASK_BASELINES = {"zero_shot": {"accuracy": 0.25}, "few_shot": {"accuracy": 0.31}, "few_shot_k": 3}


def write_task_study(results: Path, study: str = "tasks", acc_8: list[float] = TASK_ACC_8,
                     acc_32: list[float] = TASK_ACC_32) -> Path:
    """Two seed-matched arms x 5 trials with classification scores (accuracy, macro-F1 = accuracy
    − 0.05) and the base model's zero-/few-shot baselines; perplexity 50 + trial in both arms."""
    for cell, accs in ((SMOL_8, acc_8), (SMOL_32, acc_32)):
        for trial, acc in enumerate(accs, 1):
            write_run(results, study, cell, trial, ppl=50.0 + trial, summary={
                "metrics": {"accuracy": acc, "macro_f1": acc - 0.05},
                "tasks": {"evaluators": ["classification"], "n_examples": 100, "subset_sha256": "ab" * 32,
                          "outputs": "evals/tasks.json", "classes": ["a", "b"], **TASK_BASELINES}})
    return results / study
