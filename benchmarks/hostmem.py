"""Host memory per cached adapter, for the serving benchmark (see benchmarks/serve.py).

Two figures per server:

- RSS: process-tree resident memory (psutil) before and after loading M fresh adapters into the
  host cache, after one base-model request and one adapter request (one-time costs: imports,
  decoding tables); (after - before) / M. What the machine pays, allocator slack included; noisy
  at small adapter sizes.
- cache bytes (selora-serve only): `selora_adapter_resident_bytes{tier="host"}` over
  `selora_adapters_resident{tier="host"}` from its /metrics, the exact bytes each cached adapter
  holds: dense A and B, or its coefficients with --host-cache-form spectral. Plain vLLM exposes no
  such figure; its cached adapter holds exactly its dense tensors (`dense_tensor_bytes`).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import psutil

try:
    from benchmarks.traffic import prompts, sequential_ttft
except ImportError:
    from traffic import prompts, sequential_ttft


def tree_rss(server) -> tuple[int, int]:
    """Resident bytes of the server's API process, and of every process under it (engine, workers)."""
    root = psutil.Process(server.process.pid)
    below = 0
    for proc in root.children(recursive=True):
        try:
            below += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return root.memory_info().rss, below


def cache_bytes_per_adapter(server) -> int | None:
    """Exact bytes per adapter in selora-serve's host cache, from its /metrics (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    host = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("selora_adapter_resident_bytes", "selora_adapters_resident") and s.labels.get("tier") == "host":
                host[s.name] = s.value
    count = host.get("selora_adapters_resident")
    return int(host["selora_adapter_resident_bytes"] // count) if count else None


def measure_memory(server, base: str, primer: str, names: list[str], prompt_len: int, vocab: int, seed: int) -> dict:
    """Host memory per cached adapter: RSS growth over loading `names`, after `base` and `primer`
    requests; and, for selora-serve, the exact cache bytes per adapter."""
    asyncio.run(sequential_ttft(server, [base, primer], prompts(2, prompt_len, vocab, seed)))
    time.sleep(1)  # let the first request's transient allocations settle
    before = tree_rss(server)
    asyncio.run(sequential_ttft(server, names, prompts(len(names), prompt_len, vocab, seed + 1)))
    time.sleep(1)
    after = tree_rss(server)
    m = max(1, len(names))
    return {"cached_adapters": len(names), "rss_before_bytes": sum(before), "rss_after_bytes": sum(after),
            "host_bytes_per_adapter": (sum(after) - sum(before)) // m,
            "api_bytes_per_adapter": (after[0] - before[0]) // m, "engine_bytes_per_adapter": (after[1] - before[1]) // m,
            "cache_bytes_per_adapter": cache_bytes_per_adapter(server)}
