"""The library's own reference forward pass: a base model with an adapter applied by hooks.

Independent of PEFT and of merging: each adapted nn.Linear's output y = W0 x + b gets
scaling * B (A x) added (SeLoRA), or is recomputed with the DoRA weight (SeDoRA). Used by
tests as the third way to compute an adapted model's logits.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .adapter import SpectralAdapter, materialise_adapter
from .merge import merged_weight


@contextlib.contextmanager
def adapted(model: torch.nn.Module, adapter: SpectralAdapter) -> Iterator[torch.nn.Module]:
    """Within the block, `model` computes with `adapter` applied; hooks are removed after."""
    modules = dict(model.named_modules())
    missing = [n for n in adapter.modules if n not in modules]
    if missing:
        raise ValueError(f"adapter module {missing[0]} not in the model ({len(missing)} missing)")
    dense = materialise_adapter(adapter)
    scaling = adapter.config.scaling
    handles = []
    for name, (a, b) in dense.items():
        linear = modules[name]
        a = a.to(linear.weight.device, linear.weight.dtype)
        b = b.to(linear.weight.device, linear.weight.dtype)
        magnitude = adapter.modules[name].magnitude

        if magnitude is None:
            def hook(mod, args, out, a=a, b=b):
                return out + scaling * torch.nn.functional.linear(torch.nn.functional.linear(args[0], a), b)
        else:
            w = merged_weight(linear.weight.detach(), a, b, scaling, magnitude.to(linear.weight.device))

            def hook(mod, args, out, w=w):
                return torch.nn.functional.linear(args[0], w, mod.bias)

        handles.append(linear.register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def greedy_tokens(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Exactly `max_new_tokens` greedy token ids per prompt from a transformers model, one
    prompt at a time (no padding effects): the reference outputs serving is checked against."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out
