"""One real vLLM engine (CPU build, float32, LoRA enabled) shared by the whole session."""

from __future__ import annotations

import pytest

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="session")
def vllm_engine(tiny_model):
    pytest.importorskip("vllm")
    from vllm import LLM

    llm = LLM(
        model=str(tiny_model),
        enable_lora=True,
        max_lora_rank=8,
        max_loras=2,
        dtype="float32",
        kv_cache_memory_bytes=512 * 2**20,
        max_model_len=256,
        enforce_eager=True,
        seed=0,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm


def hf_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """Greedy continuations with transformers (the reference outputs), MAX_NEW_TOKENS by default."""
    from selora_serve.reference import greedy_tokens

    return greedy_tokens(model, tokenizer, prompts, max_new_tokens)
