"""Refuse, before vLLM starts, a base model the engine would accept and then fail to run.

    problem = attention_problem(hf_config, dtype="float32", limits=cpu_attention_limits())

A refusal is one line naming the model, the field, its value and what the engine supports
(`PreflightError`, shown by `selora-serve` as `error: ...` with exit status 2). It exists for
failures vLLM defers to the first request, when a dead engine answers 500 to every tenant; what
vLLM already refuses at start-up (an unknown architecture, a KV cache that does not fit) is left
to vLLM's own message.
"""

from __future__ import annotations

from pathlib import Path

from ..vllm_ext.engine_support import AttentionLimits


class PreflightError(ValueError):
    """The engine cannot run this model on this host."""


def head_size(config) -> tuple[int, str]:
    """(attention head size, how it was found) as vLLM computes it for decoder models."""
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit), "the config's head_dim"
    hidden, heads = config.hidden_size, config.num_attention_heads
    return hidden // heads, f"hidden_size {hidden} / num_attention_heads {heads}"


def attention_problem(config, dtype: str | None, limits: AttentionLimits) -> str | None:
    """Why `limits`' backend cannot run `config` in `dtype` (None: it can, or it is not known)."""
    if getattr(config, "num_attention_heads", None) is None:
        return None
    size, source = head_size(config)
    if size not in limits.head_sizes:
        return (f"attention head size {size} ({source}) is not supported by vLLM's {limits.backend} backend, "
                f"which supports head sizes {', '.join(map(str, limits.head_sizes))}: the engine would start and "
                "fail on the first request")
    if dtype and dtype not in ("auto", *limits.dtypes):
        return f"--dtype {dtype} is not supported by vLLM's {limits.backend} backend ({', '.join(limits.dtypes)})"
    return None


def check_model(model: str, dtype: str | None, cpu: bool) -> None:
    """Raise PreflightError if vLLM cannot run `model` here; a model whose config cannot be read
    locally (a hub id) is left to vLLM."""
    if not cpu:
        return
    if not (Path(model) / "config.json").is_file():
        return
    from ..base_model import load_config
    from ..vllm_ext.engine_support import cpu_attention_limits

    problem = attention_problem(load_config(model), dtype, cpu_attention_limits())
    if problem:
        raise PreflightError(f"{model}: {problem}. Serve it on a GPU host, or choose a model the CPU backend supports")
