"""`/metrics` of the `selora-serve` process, scraped and parsed: the adapter metrics sit beside
vLLM's own, the per-adapter counters move by exactly the usage the responses report, and decoding,
loading and LRU eviction show up as adapters are cycled through the slots and host cache."""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from collections import Counter

import pytest

from selora_serve.vllm_ext.metrics import ENV_MULTIPROC, multiprocess_dir

from .conftest import BASE_NAME, HOST_CACHE, SLOTS
from .test_server import _post

vllm = pytest.mark.vllm


def test_multiprocess_dir_is_fresh_removed_after_and_a_users_is_kept(tmp_path):
    env: dict[str, str] = {}
    with multiprocess_dir(env) as path:
        assert env[ENV_MULTIPROC] == path and os.path.isdir(path) and not os.listdir(path)
    assert ENV_MULTIPROC not in env and not os.path.exists(path)
    env = {ENV_MULTIPROC: str(tmp_path)}
    with multiprocess_dir(env) as path:
        assert path == str(tmp_path)
    assert env == {ENV_MULTIPROC: str(tmp_path)} and tmp_path.is_dir()


def test_weight_bytes_counts_shared_storage_once_and_coefficients_for_spectral_form(checkpoints):
    """The resident-bytes gauge's unit: dense tensors of a LoRAModel (packed lists included, a
    tensor shared between modules once), or the coefficients of one held in spectral form."""
    from types import SimpleNamespace

    import torch

    from selora_serve.checkpoint import load_checkpoint, load_packed
    from selora_serve.vllm_ext import host_cache
    from selora_serve.vllm_ext.metrics import weight_bytes

    a, b = torch.zeros(8, 32), torch.zeros(64, 8, dtype=torch.float16)
    dense = SimpleNamespace(loras={"q": SimpleNamespace(lora_a=a, lora_b=b),
                                   "qkv": SimpleNamespace(lora_a=[a, None, torch.zeros(8, 32)], lora_b=[b, None, b])},
                            modules_to_save={})
    assert weight_bytes(dense) == 2 * 8 * 32 * 4 + 64 * 8 * 2
    adapter = load_checkpoint(checkpoints["haar"])
    held = SimpleNamespace(loras={}, modules_to_save={})
    host_cache.attach(held, host_cache.SpectralSource(load_packed(checkpoints["haar"]), rebuild=lambda: None))
    coef = sum(m.coef_a.numel() + m.coef_b.numel() for m in adapter.modules.values())
    assert weight_bytes(held) == coef * adapter.modules["model.layers.0.self_attn.q_proj"].coef_a.element_size()


class Scrape:
    """One parsed /metrics page: metric families by name and sample values by (name, labels)."""

    def __init__(self, server):
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{server.url}/metrics", timeout=60) as resp:
            text = resp.read().decode()
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels) -> float:
        """The sample `name` with exactly `labels`; 0 if absent (a series not created yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """`name` summed over all its label sets."""
        return sum(v for (n, _), v in self.samples.items() if n == name)


@vllm
def test_adapter_metrics_sit_beside_vllms_own(server):
    page = Scrape(server)
    assert {
        "selora_adapter_decode_seconds": "histogram", "selora_adapter_loads": "counter",
        "selora_adapter_evictions": "counter", "selora_adapters_resident": "gauge",
        "selora_adapter_resident_bytes": "gauge",
    }.items() <= page.types.items(), page.types
    # vLLM's own, still served alongside (multiprocess mode keeps them).
    vllm = {n for n in page.types if n.startswith("vllm:")}
    assert {"vllm:num_requests_running", "vllm:request_success", "vllm:prompt_tokens", "vllm:generation_tokens",
            "vllm:e2e_request_latency_seconds"} <= vllm, sorted(vllm)


def _usage_of_requests(client) -> tuple[Counter, int]:
    """Make non-streaming, streaming, chat and n=2 requests.

    Returns (adapter, field) -> total from the responses' usage, and the number of sequences
    (vLLM's own request counters count each of the n choices as a request).
    """
    got: Counter = Counter()
    sequences = 0

    def add(model, usage, n=1):
        nonlocal sequences
        sequences += n
        got[model, "requests"] += 1
        got[model, "prompt"] += usage.prompt_tokens
        got[model, "generated"] += usage.completion_tokens

    for model, max_tokens in ((BASE_NAME, 3), ("haar", 5), ("haar", 2), ("fourier", 4)):
        add(model, client.completions.create(model=model, prompt="the cat is", max_tokens=max_tokens,
                                             temperature=0).usage)
    chat = client.chat.completions.create(model="haar", messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=4, temperature=0)
    add("haar", chat.usage)
    stream = client.completions.create(model="fourier", prompt="river and", max_tokens=6, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    add("fourier", [c for c in stream if c.usage][-1].usage)
    # n=2: one request and one prompt, the tokens of both choices (as the usage reports them).
    add("db4", client.completions.create(model="db4", prompt="one two", max_tokens=3, n=2, temperature=1.0,
                                         seed=1, extra_body={"min_tokens": 3}).usage, n=2)
    return got, sequences


@vllm
def test_requests_and_tokens_per_adapter_move_by_exactly_the_usage(server):
    before = Scrape(server)
    vllm_before = before.total("vllm:request_success_total")
    sent, sequences = _usage_of_requests(server.client())
    after = Scrape(server)
    for (model, field), n in sent.items():
        name = {"requests": "selora_adapter_requests_total", "prompt": "selora_adapter_prompt_tokens_total",
                "generated": "selora_adapter_generated_tokens_total"}[field]
        delta = after.value(name, adapter=model) - before.value(name, adapter=model)
        assert delta == n, (model, field, delta, n)
    assert after.types["selora_adapter_requests"] == "counter"
    # vLLM's own counters still move in multiprocess mode.
    assert after.total("vllm:request_success_total") - vllm_before == sequences


def _tensor_bytes(path) -> tuple[int, int]:
    """(dense A/B bytes in float32 as vLLM holds them on CPU, coefficient bytes) of a checkpoint."""
    from selora_serve.checkpoint import load_checkpoint
    from selora_serve.peft_io import dense_state_dict

    adapter = load_checkpoint(path)
    coef = sum(t.numel() * t.element_size() for m in adapter.modules.values() for t in (m.coef_a, m.coef_b))
    return sum(t.numel() * 4 for t in dense_state_dict(adapter).values()), coef


@vllm
def test_fresh_adapters_decode_load_evict_and_gauges_stay_consistent(server):
    """More fresh adapters than host cache: each decodes once, and both LRU tiers evict."""
    # Fresh names for the store's adapters: new adapter ids, never resident before.
    sources = [("haar", "db4", "fourier")[i % 3] for i in range(HOST_CACHE + 1)]
    assert len(sources) > HOST_CACHE > SLOTS
    run = uuid.uuid4().hex[:6]
    before = Scrape(server)
    client = server.client()
    for i, src in enumerate(sources):
        name = f"metrics-{run}-{i}"
        status, text = _post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(server.store / src)})
        assert status == 200, text
        client.completions.create(model=name, prompt="the cat", max_tokens=1)
    after = Scrape(server)

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("selora_adapter_decode_seconds_count") == len(sources)
    assert delta("selora_adapter_decode_seconds_sum") > 0
    count = after.value("selora_adapter_decode_seconds_count")
    assert after.value("selora_adapter_decode_seconds_bucket", le="+Inf") == count
    assert delta("selora_adapter_loads_total", source="selora") == len(sources)
    assert delta("selora_adapter_loads_total", source="peft") == 0
    assert delta("selora_adapter_evictions_total", tier="host") >= len(sources) - HOST_CACHE
    assert delta("selora_adapter_evictions_total", tier="slot") >= len(sources) - SLOTS

    # The caches are full of real adapters, all the same size here (one base, rank, target set).
    slot, host = (after.value("selora_adapters_resident", tier=t) for t in ("slot", "host"))
    assert (slot, host) == (SLOTS, HOST_CACHE)
    # The server holds adapters in spectral form (conftest): the cache holds coefficients only,
    # (1 - eta) of the dense bytes, counted for the slot tier too (vLLM's slot buffers are
    # preallocated; the adapter itself owns only its coefficients).
    dense, coef = _tensor_bytes(server.store / "haar")
    assert coef / dense == pytest.approx(1 - 0.6, abs=0.01)
    assert after.value("selora_adapter_resident_bytes", tier="slot") == SLOTS * coef
    assert after.value("selora_adapter_resident_bytes", tier="host") == HOST_CACHE * coef


@vllm
def test_spectral_host_cache_decodes_on_activation_and_outputs_stay_right(server, expected):
    """An adapter that left its slot but not the host cache takes a slot again: in spectral form
    that is one more decode (from the coefficients in memory) and no load; tokens stay right."""
    from .test_server import PROMPTS, complete

    run = uuid.uuid4().hex[:6]
    client = server.client()
    names = {f"act-{run}-{i}": server.store / src for i, src in enumerate(("haar", "db4", "fourier"))}
    for name, path in names.items():
        assert _post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})[0] == 200
    target, *others = names
    # Slots: the pinned adapter plus SLOTS - 1; the host cache holds the pinned one and these three.
    assert len(others) == SLOTS - 1 and len(names) + 1 == HOST_CACHE
    for name in [target, *others]:  # `target` is the least recently used of the unpinned slots
        complete(client, name, PROMPTS[:1])
    before = Scrape(server)
    assert complete(client, target, PROMPTS[:2]) == expected(names[target], PROMPTS)[:2]
    after = Scrape(server)
    assert after.value("selora_adapter_loads_total", source="selora") == before.value(
        "selora_adapter_loads_total", source="selora"), "the adapter was still in the host cache"
    assert after.value("selora_adapter_decode_seconds_count") == before.value("selora_adapter_decode_seconds_count") + 1
    assert after.value("selora_adapter_evictions_total", tier="slot") == before.value(
        "selora_adapter_evictions_total", tier="slot") + 1
    assert re.search(r"decoded SeLoRA adapter \S+ \(10 modules, host cache -> slot\) in [0-9.]+ ms",
                     server.log.read_text(errors="replace"))


@vllm
def test_admin_unload_is_not_an_eviction_and_frees_the_gauges(server):
    name = f"metrics-unload-{uuid.uuid4().hex[:6]}"
    assert _post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(server.store / "db4")})[0] == 200
    before = Scrape(server)
    status, text = _post(server, f"/v1/selora/adapters/{name}/unload", {})
    assert status == 200, text
    after = Scrape(server)
    for tier in ("slot", "host"):
        evictions, resident = "selora_adapter_evictions_total", "selora_adapters_resident"
        assert after.value(evictions, tier=tier) == before.value(evictions, tier=tier)
        assert after.value(resident, tier=tier) == before.value(resident, tier=tier) - 1
    assert json.loads(text) == {"name": name, "unloaded": True}
