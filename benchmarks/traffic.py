"""The serving benchmark's traffic: streamed requests through the official openai client, seeded
traces over many adapters, and their summary figures (see benchmarks/serve.py).

A request's TTFT is the arrival of the first stream chunk that carries a choice; its inter-token
latency is (last token - first token) / (tokens - 1), since vLLM merges a stream's tokens into
one chunk when the client lags, and gaps between chunks would undercount.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int
    tpot: float | None = None  # (last token - first token) / (tokens - 1)


async def request(client, model: str, prompt: list[int], max_tokens: int) -> Sample:
    """One streamed completion; TTFT is the arrival of the first chunk that carries a choice."""
    start = time.perf_counter()
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True, "min_tokens": max_tokens},
    )
    arrivals, tokens = [], 0
    async for chunk in stream:
        if chunk.choices:
            arrivals.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    if not arrivals:
        raise RuntimeError(f"{model}: the stream carried no tokens")
    tpot = (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 else None
    return Sample(arrivals[0] - start, end - start, tokens, tpot)


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(count)]


def trace_models(names: list[str], count: int, popularity: str, seed: int) -> list[str]:
    """`count` model names drawn from `names`: uniformly or with Zipf popularity p_i ~ 1/i."""
    rng = random.Random(seed)
    if popularity == "uniform":
        return [rng.choice(names) for _ in range(count)]
    weights = [1.0 / (i + 1) for i in range(len(names))]
    return rng.choices(names, weights=weights, k=count)


async def run_trace(server, models: list[str], prompt_ids: list[list[int]], max_tokens: int,
                    concurrency: int) -> tuple[list[Sample], float]:
    """The samples of every request and the wall time of the whole trace."""
    client = server.async_client()
    gate = asyncio.Semaphore(concurrency)

    async def bounded(model, prompt):
        async with gate:
            return await request(client, model, prompt, max_tokens)

    start = time.perf_counter()
    samples = await asyncio.gather(*(bounded(m, p) for m, p in zip(models, prompt_ids)))
    wall = time.perf_counter() - start
    await client.close()
    return list(samples), wall


def summarise(runs: list[tuple[list[Sample], float]], distinct_models: list[int]) -> dict:
    """Figures over one or more runs of a trace: rates are total work over total wall time."""
    samples = [s for run, _ in runs for s in run]
    wall = sum(w for _, w in runs)
    ttft = [s.ttft for s in samples]
    tpot = [s.tpot for s in samples if s.tpot is not None]
    return {
        "requests": len(samples), "rounds": len(runs), "distinct_models": distinct_models,
        "wall_s": round(wall, 3), "requests_per_s": round(len(samples) / wall, 3),
        "output_tokens_per_s": round(sum(s.tokens for s in samples) / wall, 2),
        "round_output_tokens_per_s": [round(sum(s.tokens for s in run) / w, 2) for run, w in runs],
        "ttft_p50_ms": ms(np.percentile(ttft, 50)), "ttft_p99_ms": ms(np.percentile(ttft, 99)),
        "itl_p50_ms": ms(np.percentile(tpot, 50)) if tpot else None,
    }


async def sequential_ttft(server, models: list[str], prompt_ids: list[list[int]],
                          warmup: str | None = None) -> list[float]:
    """TTFTs of one request after another. `warmup`: a model requested once first, untimed, so
    the client's connection and the server's idle-time work are not charged to the first probe."""
    client = server.async_client()
    if warmup is not None and prompt_ids:
        await request(client, warmup, prompt_ids[0], 2)
    out = [(await request(client, m, p, 2)).ttft for m, p in zip(models, prompt_ids)]
    await client.close()
    return out


def ms(seconds: float) -> float:
    return round(1e3 * float(seconds), 2)
