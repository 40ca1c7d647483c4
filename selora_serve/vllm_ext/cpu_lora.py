"""A fix to vLLM 0.32's CPU LoRA path: a request without an adapter must get no LoRA delta.

vLLM marks the tokens of a base-model request with LoRA index -1. Its GPU kernels skip them; the
plain-torch ops its CPU backend uses (`vllm.lora.ops.torch_ops.bgmv_shrink`) index the stacked
slot weights with it, `lora_a[-1]`, which is the LAST slot: a base-model request decoded in a
batch after an adapter took that slot gets that adapter's delta. On a multi-tenant server that is
one tenant's adapter applied to another tenant's request (benchmarks/load.py found it: base-model
answers went wrong as soon as every slot was filled).

The shrink writes its output (x A, r columns), which the expand then multiplies by B and adds to
the layer's output; zeroing the base-model rows of that output makes their delta exactly 0,
whatever slot -1 selected. The fix is split by cost, since a forward runs a shrink per slice of
every LoRA layer (about 200 for a 30-layer Llama):

- once per batch, `PunicaWrapperCPU.update_metadata` (where vLLM turns the batch's mapping into
  per-token indices) also records which rows are base-model rows, or None when there are none
  (the common case: every request names an adapter);
- after every `add_shrink` (the shrink of each LoRA linear layer, all its slices) those rows are
  zeroed with one `masked_fill_` per slice, and nothing is done when there are none;
- `add_lora_logits` (an adapter on lm_head, one call per step) shrinks and expands inside one
  call, so its base-model rows of x are zeroed before it instead.

Installed in every process (only the worker runs it); the GPU punica wrapper is not touched.
Every hooked method is pinned in `pin.HOOKS`.
"""

from __future__ import annotations

import functools

import torch

_MARK = "_selora_patched"
_TOKEN_ROWS = "_selora_base_rows"  # (tokens, 1) bool, True on base-model rows; None if none
_SAMPLER_ROWS = "_selora_base_sampler_rows"  # the same for the rows the sampler sees


def base_rows(indices: torch.Tensor) -> torch.Tensor | None:
    """A (rows, 1) mask of the rows with LoRA index -1, or None when no row has one."""
    mask = indices < 0
    return mask.unsqueeze(-1) if bool(mask.any()) else None


def _update_metadata(original):
    @functools.wraps(original)
    def update_metadata(self, *args, **kwargs):
        original(self, *args, **kwargs)
        setattr(self, _TOKEN_ROWS, base_rows(self.token_lora_indices))
        setattr(self, _SAMPLER_ROWS, base_rows(self.sampler_indices))

    return update_metadata


def _add_shrink(original):
    @functools.wraps(original)
    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):
        original(self, y, x, lora_a_stacked, scale, **kwargs)
        rows = getattr(self, _TOKEN_ROWS, None)
        if rows is not None:
            for out in (y,) if isinstance(y, torch.Tensor) else y:
                out.view(-1, out.shape[-1]).masked_fill_(rows, 0)

    return add_shrink


def _add_lora_logits(original):
    @functools.wraps(original)
    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs):
        rows = getattr(self, _SAMPLER_ROWS, None)
        if rows is not None:
            x = x.reshape(-1, x.shape[-1]).masked_fill(rows, 0)
        original(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs)

    return add_lora_logits


_PATCHES = {"update_metadata": _update_metadata, "add_shrink": _add_shrink, "add_lora_logits": _add_lora_logits}


def install() -> None:
    """Patch the CPU punica wrapper's methods (idempotent)."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    for name, wrap in _PATCHES.items():
        current = getattr(PunicaWrapperCPU, name)
        if not getattr(current, _MARK, False):
            patched = wrap(current)
            setattr(patched, _MARK, True)
            setattr(PunicaWrapperCPU, name, patched)
