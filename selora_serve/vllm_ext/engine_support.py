"""What vLLM's engine can run on this host, asked of vLLM itself before it starts.

    cpu_attention_limits() -> AttentionLimits(head_sizes=(32, 64, ...), dtypes=("float16", ...))

vLLM 0.32's CPU attention backend starts with any model and then raises "Unsupported CPU attention
configuration: head_dim=24" on the first request, which kills the engine: every tenant gets a 500
from then on. Its backend class declares what it supports (`get_supported_head_sizes`,
`supported_dtypes`), so `serve.preflight` checks a model against that before launching. Only the
CPU backend is asked: on GPUs vLLM picks among several backends and refuses what none supports
at start-up itself.
"""

from __future__ import annotations

from dataclasses import dataclass

CPU_ATTENTION_BACKEND = ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend")


@dataclass(frozen=True)
class AttentionLimits:
    backend: str
    head_sizes: tuple[int, ...]
    dtypes: tuple[str, ...]


def cpu_attention_limits() -> AttentionLimits:
    import importlib

    module, name = CPU_ATTENTION_BACKEND
    backend = getattr(importlib.import_module(module), name)
    dtypes = tuple(str(d).removeprefix("torch.") for d in backend.supported_dtypes)
    return AttentionLimits(backend.get_name(), tuple(backend.get_supported_head_sizes()), dtypes)
