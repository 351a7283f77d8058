"""Dequantize each 4-bit base weight once per evaluation instead of once per forward.

With gradients off, bitsandbytes 0.50 runs a CPU ``Linear4bit`` through its default
``gemm_4bit``: ``dequantize_4bit`` of the whole weight, then ``torch.nn.functional.linear``
(``bitsandbytes/backends/default/ops.py``; the CPU's repacked inference kernel is switched off by
``modelling.keep_cpu_4bit_layout``). Greedy generation runs one forward per new token, so every
token paid for a full dequantize of every layer. :func:`dequantized_4bit_weights` computes the
same dequantized tensor once, by the same op with the same arguments, and feeds it to the same
``linear``: the outputs are the same bits (``tests/test_weight_cache.py``), only faster
(``make bench``: ``eval_dequant_cache``).

Only for evaluation: a forward that needs gradients (training) goes through bitsandbytes'
own path untouched, the cache is dropped when the block ends, and only CPU layers in the
unpacked layout are touched (on a GPU the fused kernels differ and the memory would not fit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _dequantize(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """The tensor bitsandbytes' default ``gemm_4bit`` builds for ``module`` at input ``dtype``."""
    state = module.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            state.absmax, state.state2.absmax, state.state2.code, 256, torch.float32
        ) + state.offset
    packed = module.weight.data.view(-1, 1)
    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, state.blocksize, state.quant_type,
                                                          state.shape, dtype)


def _cached_forward(module: Any) -> Any:
    original = module.forward
    cache: dict[torch.dtype, torch.Tensor] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        bias = module.bias
        if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
            return original(x)
        if not module.compute_type_is_set:
            module.set_compute_type(x)
            module.compute_type_is_set = True
        inp_dtype = x.dtype
        if module.compute_dtype is not None:
            x = x.to(module.compute_dtype)
        if bias is not None:
            bias = bias.to(x.dtype)
        if x.numel() == 0 or x.shape[-1] != module.weight.quant_state.shape[1]:
            return original(x)  # bitsandbytes' own empty / [K, N]-orientation branches
        weight = cache.get(x.dtype)
        if weight is None:
            weight = cache[x.dtype] = _dequantize(module, x.dtype)
        return torch.nn.functional.linear(x, weight, bias).to(inp_dtype)

    return forward


def _cacheable(module: Any) -> bool:
    import bitsandbytes as bnb

    return (isinstance(module, bnb.nn.Linear4bit) and module.weight.device.type == "cpu"
            and getattr(module.weight, "quant_state", None) is not None
            and not getattr(module.weight.quant_state, "packing_format_for_cpu", False)
            and len(module.weight.quant_state.shape) == 2
            and (not module.weight.quant_state.nested or module.weight.quant_state.state2.blocksize == 256))


@contextmanager
def dequantized_4bit_weights(model: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, CPU 4-bit layers of ``model`` reuse one dequantized weight per dtype;
    yields how many layers were switched (0 when disabled or none qualify)."""
    layers = [m for m in model.modules() if _cacheable(m)] if enabled else []
    for layer in layers:
        layer.forward = _cached_forward(layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward; the cached tensors go with the closure
