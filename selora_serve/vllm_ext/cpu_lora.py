"""A fix to vLLM 0.32's CPU LoRA kernels: a request without an adapter must get no LoRA delta.

vLLM marks the tokens of a base-model request with LoRA index -1. Its GPU kernels skip them; the
plain-torch ops its CPU backend uses (`vllm.lora.ops.torch_ops.bgmv_shrink`) index the stacked
slot weights with it, `lora_a[-1]`, which is the LAST slot: a base-model request decoded in a
batch after an adapter took that slot gets that adapter's delta. On a multi-tenant server that is
one tenant's adapter applied to another tenant's request (benchmarks/load.py found it: base-model
answers went wrong as soon as every slot was filled).

The shrink writes (not adds) its output, which the expand then multiplies by B and adds; zeroing
the rows of index -1 after the shrink makes their delta exactly 0, whatever slot -1 selected.
Installed in every process (only the worker runs it); GPU kernels are not touched.
"""

from __future__ import annotations

import functools

_MARK = "_selora_patched"


def _masked(shrink):
    @functools.wraps(shrink)
    def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
        no_lora = lora_indices_tensor < 0
        if bool(no_lora.any()):
            output_tensor[no_lora] = 0

    setattr(bgmv_shrink, _MARK, True)
    return bgmv_shrink


def install() -> None:
    """Patch the CPU punica wrapper's shrink (idempotent)."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, _MARK, False):
        return
    patched = _masked(lora_ops.bgmv_shrink)
    lora_ops.bgmv_shrink = patched  # sgmv_shrink (prefill) calls it through this module
    punica_cpu.bgmv_shrink = patched  # the decode path imported it by name
