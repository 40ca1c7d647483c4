"""Prometheus metrics of adapter serving, on vLLM's `/metrics` beside vLLM's own.

    selora_adapter_decode_seconds                   histogram  SeLoRA coefficients -> dense A/B, per decode
    selora_adapter_loads_total{source}              counter    checkpoints loaded by the worker: selora | peft
    selora_adapter_evictions_total{tier}            counter    LRU evictions: slot | host (see below)
    selora_adapters_resident{tier}                  gauge      adapters resident: slot | host
    selora_adapter_resident_bytes{tier}             gauge      their LoRA A/B weight bytes
    selora_adapter_requests_total{adapter}          counter    finished requests, by requested model name
    selora_adapter_prompt_tokens_total{adapter}     counter    their prompt tokens
    selora_adapter_generated_tokens_total{adapter}  counter    their generated (completion) tokens
    selora_tenant_requests_total{tenant, status}    counter    HTTP requests per tenant (--tenants), by status
    selora_adapter_in_slot{lora_id}                 gauge      1 while vLLM's adapter id occupies a LoRA slot
    selora_adapter_fetch_bytes_total{adapter}       counter    bytes fetched from object storage, per adapter
    selora_adapter_fetch_seconds                    histogram  time per fetch from object storage (cache misses)

Tiers. `host` is vLLM's LoRA cache in host memory (`--max-cpu-loras` LoRAModels, every resident
adapter, including those in a slot); `slot` is the subset copied into the `--max-loras` slots the
forward pass reads. A slot eviction is an adapter losing its slot to another; a host eviction is
an adapter's weights dropped from the cache (its next request decodes it again). An adapter
dropped from the host cache while in a slot counts in both tiers. Explicit removals (the admin
`unload`, vLLM's warm-up clean-up) are not evictions. vLLM's warm-up dummy adapters are never
counted. Bytes are the adapter's own A/B tensors (vLLM preallocates the slot buffers at max rank);
for an adapter held in spectral form (`host_cache`), its coefficients.

Processes. Decodes, loads, evictions and residency happen in the engine's worker process; request
counts and fetches from object storage (the resolver's, `store.s3.cached_copy`) are taken in the API
server, where `OutputProcessor._finish_request` sees each finished
request's LoRA name, prompt length and output tokens (requests the client aborted are not
counted; with n > 1 the prompt and the request count once, the tokens of every choice count).
`/metrics` is served by the API server, so `selora-serve` runs vLLM with prometheus-client's
multiprocess mode (`multiprocess_dir`): every process writes its values to files in one
directory and vLLM's `/metrics` collects them all, vLLM's own metrics included. Worker-side
metrics are per worker: with tensor parallelism each rank decodes, and counters add up over ranks
(resident counts take the max, bytes the sum). Without that directory (plain `vllm serve` with
this plugin installed), only the API-server metrics reach `/metrics`.

Requests to the base model are counted under its served name (`set_base_name`, called by the
admin plugin at start-up; "base" until then). Metric objects are created on first use, once per
process (worker and API-server metrics separately), so importing or installing this module
registers nothing.
"""

from __future__ import annotations

import functools
import logging
import os
from types import SimpleNamespace

from ..envdir import env_scratch_dir
from .host_cache import source_of

logger = logging.getLogger("vllm.selora_serve")

ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TIERS = ("slot", "host")
SOURCES = ("selora", "peft")

_MARK = "_selora_metrics"
_worker: SimpleNamespace | None = None
_frontend: SimpleNamespace | None = None
_base_name = "base"


def multiprocess_dir(environ=os.environ):
    """Run the body with PROMETHEUS_MULTIPROC_DIR set to a fresh directory, removed afterwards.

    prometheus-client picks its value storage when first imported, so this must wrap the import
    of vLLM. A directory the user set is used as is (vLLM asks that it be wiped between runs).
    """
    return env_scratch_dir(ENV_MULTIPROC, "selora-serve-metrics-", environ)


def worker_metrics() -> SimpleNamespace:
    """This worker's metric objects, created (at zero) on first use: loading.py calls it when the
    worker's LoRA manager is built, so the families are on /metrics before the first adapter."""
    global _worker
    if _worker is None:
        from prometheus_client import Counter, Gauge, Histogram

        m = SimpleNamespace(
            decode=Histogram("selora_adapter_decode_seconds",
                             "Time to decode a SeLoRA checkpoint into dense LoRA A/B tensors.",
                             buckets=DECODE_BUCKETS),
            loads=Counter("selora_adapter_loads", "Adapter checkpoints loaded by the worker.", ["source"]),
            evictions=Counter("selora_adapter_evictions", "Adapters evicted by vLLM's LRU caches.", ["tier"]),
            resident=Gauge("selora_adapters_resident", "Adapters resident in LoRA slots / the host cache.",
                           ["tier"], multiprocess_mode="livemax"),
            resident_bytes=Gauge("selora_adapter_resident_bytes", "LoRA weight bytes of the resident adapters.",
                                 ["tier"], multiprocess_mode="livesum"),
            # Per adapter id, so the admin API (another process) can tell which adapters hold a
            # slot: vLLM 0.32's engine client reports the host cache only.
            in_slot=Gauge("selora_adapter_in_slot", "1 while the adapter (vLLM lora id) holds a LoRA slot.",
                          ["lora_id"], multiprocess_mode="livemax"),
        )
        # Every fixed label series exists from the start, so rate() sees the first increment.
        for source in SOURCES:
            m.loads.labels(source=source)
        for tier in TIERS:
            m.evictions.labels(tier=tier)
            m.resident.labels(tier=tier).set(0)
            m.resident_bytes.labels(tier=tier).set(0)
        _worker = m
    return _worker


def frontend_metrics() -> SimpleNamespace:
    """The API server's metric objects (per-adapter series appear with their first request)."""
    global _frontend
    if _frontend is None:
        from prometheus_client import Counter, Histogram

        _frontend = SimpleNamespace(
            fetch_bytes=Counter("selora_adapter_fetch_bytes", "Bytes of adapters fetched from object storage.",
                                ["adapter"]),
            fetch_seconds=Histogram("selora_adapter_fetch_seconds",
                                    "Time to fetch one adapter from object storage into the local cache.",
                                    buckets=FETCH_BUCKETS),
            requests=Counter("selora_adapter_requests", "Finished requests per adapter.", ["adapter"]),
            prompt_tokens=Counter("selora_adapter_prompt_tokens", "Prompt tokens per adapter.", ["adapter"]),
            generated_tokens=Counter("selora_adapter_generated_tokens", "Generated tokens per adapter.",
                                     ["adapter"]),
            tenant_requests=Counter("selora_tenant_requests", "HTTP requests per tenant, by response status.",
                                    ["tenant", "status"]),
        )
    return _frontend


def set_base_name(name: str) -> None:
    global _base_name
    _base_name = name


def observe_decode(seconds: float) -> None:
    worker_metrics().decode.observe(seconds)


def count_load(source: str) -> None:
    worker_metrics().loads.labels(source=source).inc()


# --- API server: requests and tokens per adapter -------------------------------------------

def count_finished(req_state) -> None:
    """Count one finished vLLM RequestState under its adapter (or the base model's) name."""
    m = frontend_metrics()
    adapter = req_state.lora_name or _base_name
    if req_state.parent_req is None or req_state.request_index == 0:
        m.requests.labels(adapter=adapter).inc()
        m.prompt_tokens.labels(adapter=adapter).inc(req_state.prompt_len or 0)
    if req_state.detokenizer is not None:
        m.generated_tokens.labels(adapter=adapter).inc(req_state.detokenizer.num_output_tokens())


def observe_fetch(adapter: str, nbytes: int, seconds: float) -> None:
    """One adapter fetched from object storage (a cache miss in the API server)."""
    m = frontend_metrics()
    m.fetch_bytes.labels(adapter=adapter).inc(nbytes)
    m.fetch_seconds.observe(seconds)


def count_tenant_request(tenant: str, status: int) -> None:
    """Count one HTTP request of `tenant` (guard.py; "unauthenticated" for a refused key)."""
    frontend_metrics().tenant_requests.labels(tenant=tenant, status=str(status)).inc()


# --- Worker: residency and evictions -----------------------------------------------------

def weight_bytes(lora_model) -> int:
    """Bytes of a vLLM LoRAModel's tensors (shared storage counted once); cached on the model."""
    cached = getattr(lora_model, "_selora_bytes", None)
    if cached is not None:
        return cached
    source = source_of(lora_model)
    if source is not None:  # held as coefficients (its dense weights exist only in its slot)
        lora_model._selora_bytes = source.nbytes
        return source.nbytes
    seen: dict[tuple[int, int], int] = {}

    def add(t):
        if t is None:
            return
        for x in t if isinstance(t, (list, tuple)) else (t,):
            if x is not None:
                nbytes = x.numel() * x.element_size()
                seen[(x.data_ptr(), nbytes)] = nbytes

    for weights in lora_model.loras.values():
        add(weights.lora_a)
        add(weights.lora_b)
    for full in lora_model.modules_to_save.values():
        add(full.weight)
        add(getattr(full, "bias", None))
    total = sum(seen.values())
    lora_model._selora_bytes = total
    return total


def _snapshot(worker_manager) -> tuple[dict, frozenset]:
    """(host: id -> LoRAModel, slot: ids) of a WorkerLoRAManager, warm-up dummies left out."""
    manager = getattr(worker_manager, "_adapter_manager", None)
    if manager is None:
        return {}, frozenset()
    # Real adapters are instances of the class every load goes through (loading.py installs a
    # subclass for SeLoRA and PEFT alike); vLLM's warm-up dummies are plain LoRAModels.
    real = worker_manager._lora_model_cls
    host = {i: m for i, m in manager.list_adapters().items() if isinstance(m, real)}
    return host, frozenset(i for i in manager.lora_index_to_id if i in host)


def _record(before, after, evicting: bool) -> None:
    (host0, slot0), (host1, slot1) = before, after
    if host0.keys() == host1.keys() and slot0 == slot1:
        return  # the common case: a step whose adapters are already in their slots
    m = worker_metrics()
    if evicting:
        for tier, gone in (("host", host0.keys() - host1.keys()), ("slot", slot0 - slot1)):
            if gone:
                m.evictions.labels(tier=tier).inc(len(gone))
    for tier, ids in (("host", host1.keys()), ("slot", slot1)):
        m.resident.labels(tier=tier).set(len(ids))
        m.resident_bytes.labels(tier=tier).set(sum(weight_bytes(host1[i]) for i in ids))
    for ids, value in ((slot0 - slot1, 0), (slot1 - slot0, 1)):
        for lora_id in ids:
            m.in_slot.labels(lora_id=str(lora_id)).set(value)


def slot_ids() -> set[int] | None:
    """vLLM adapter ids holding a LoRA slot in any worker, read from the multiprocess metric
    files (any process may ask); None when metrics are not in multiprocess mode."""
    if not os.environ.get(ENV_MULTIPROC):
        return None
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return {
        int(sample.labels["lora_id"])
        for family in registry.collect() if family.name == "selora_adapter_in_slot"
        for sample in family.samples if sample.value >= 1
    }


def _in_slot(worker_manager, args) -> bool:
    """True when add_adapter's request names an adapter already registered and in a slot: vLLM
    calls add_adapter for every adapter of every step, and then it only touches the LRUs. Taking
    the snapshots would cost O(adapters in the host cache) per call (a thousand, here)."""
    manager = getattr(worker_manager, "_adapter_manager", None)
    lora_id = getattr(args[0], "lora_int_id", None) if args else None
    return (manager is not None and lora_id is not None and lora_id in manager.lora_index_to_id
            and lora_id in manager._registered_adapters and not getattr(args[0], "load_inplace", False))


def _observed(method, evicting: bool, fast_path: bool = False):
    """Wrap a WorkerLoRAManager method to record what it changed in the caches."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if fast_path and _in_slot(self, args):
            return method(self, *args, **kwargs)
        before = _snapshot(self)
        try:
            return method(self, *args, **kwargs)
        finally:
            _record(before, _snapshot(self), evicting)

    setattr(wrapper, _MARK, True)
    return wrapper


def install() -> None:
    """Patch vLLM where the metrics are taken (idempotent; cheap until metrics are used)."""
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager
    from vllm.v1.engine.output_processor import OutputProcessor

    cls = LRUCacheWorkerLoRAManager
    if not getattr(cls.add_adapter, _MARK, False):
        # add_adapter (every step, per adapter in the batch, and add_lora) and pin_adapter are
        # where vLLM's LRU evicts; the removals are explicit, only the gauges follow them.
        # Patched on the LRU subclass vLLM's model runner uses, so the base class is untouched.
        for name, evicting in (("add_adapter", True), ("pin_adapter", True),
                               ("remove_adapter", False), ("remove_all_adapters", False)):
            setattr(cls, name, _observed(getattr(cls, name), evicting, fast_path=name == "add_adapter"))

    finish = OutputProcessor._finish_request
    if not getattr(finish, _MARK, False):

        @functools.wraps(finish)
        def _finish_request(self, req_state):
            finish(self, req_state)
            try:
                count_finished(req_state)
            except Exception:  # a metrics fault must never fail the output loop
                logger.exception("selora-serve: counting a finished request failed")

        setattr(_finish_request, _MARK, True)
        OutputProcessor._finish_request = _finish_request
