"""The model replica of the Ray Serve app: Ray's `LLMServer` with adapters from the selora store.

Ray Serve LLM loads a LoRA adapter per replica through its multiplexing (`serve.multiplexed`: an
LRU of adapter ids per replica, and routing that prefers the replica already holding an id), by
asking a model downloader for a local directory and then vLLM's `load_lora_adapter`. Here:

- `StoreLoader` is that downloader: the adapter id `BASE:NAME` is looked up in the adapter store
  (`store.checkout`: local roots and s3:// roots through the shared byte-bounded cache, a snapshot
  verified in one pass), so SeLoRA checkpoints need no adapter_config.json and dense PEFT adapters
  in the same roots keep working. An unknown name is HTTP 404, a corrupt or unservable one 400, a
  bucket that cannot be asked 503: the single server's answers. The snapshot is then decoded by
  the selora vLLM plugin in the engine's worker, as in `selora-serve`.
- `SeloraLLMServer` loads each adapter into vLLM once per replica however many first requests
  arrive together (Ray 2.60's own path lets the second fail with a 500), unloads it from vLLM
  when Ray's LRU evicts it (Ray alone never does), removes its snapshot directory on shutdown
  (stale ones of dead replicas at start), and exports its selora_* metrics through Ray, labelled
  by replica (`metrics`).

Replica settings arrive in the replica's environment (set by `app.build`): SELORA_ADAPTER_DIRS,
SELORA_MAX_LORA_RANK and the adapter cache's, exactly as `selora-serve` hands them to vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import os

from fastapi import HTTPException
from ray.serve.llm.deployment import LLMServer

from ..base_model import facts_of_model
from ..store import AdapterError, AdapterStore
from ..store.catalog import max_rank_from_env
from ..store.checkout import checkout, release_snapshot_root, remove_stale
from . import pin
from .config import adapter_name
from .metrics import ReplicaMetrics

logger = logging.getLogger("ray.serve.selora")

class StoreLoader:
    """Ray's model downloader, answered from the adapter store (see the module docstring).

    Constructed by Ray's LLMServer as `cls(download_timeout_s=..., max_tries=...)`; it keeps no
    cache of its own: Ray's multiplex LRU is the cache, and a snapshot already made is reused."""

    def __init__(self, download_timeout_s: float | None = None, max_tries: int = 1):
        self.store = AdapterStore.from_env()
        if self.store is None:
            raise ValueError("SELORA_ADAPTER_DIRS is not set in the replica: build the app with "
                             "selora_serve.ray:build_app")
        self.max_rank = max_rank_from_env()
        self.fetches: list[tuple[str, int, float]] = []  # (adapter, bytes, seconds) of each bucket fetch

    def _checkout(self, name: str, base_model: str):
        return checkout(self.store, name, facts_of_model(base_model), self.max_rank, on_fetch=self._fetched)

    def _fetched(self, name: str, nbytes: int, seconds: float) -> None:
        from ..vllm_ext.metrics import observe_fetch  # prometheus-client only: selora_adapter_fetch_*

        self.fetches.append((name, nbytes, seconds))
        observe_fetch(name, nbytes, seconds)

    async def load_model_from_config(self, lora_model_id: str, llm_config):
        from ray.llm._internal.common.models import global_id_manager
        from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

        name = adapter_name(lora_model_id)
        try:
            path = await asyncio.to_thread(self._checkout, name, llm_config.model_loading_config.model_source
                                           or llm_config.model_id)
        except AdapterError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if path is None:
            raise HTTPException(404, f"The model `{lora_model_id}` does not exist: no adapter {name!r} in the "
                                "adapter store")
        return DiskMultiplexConfig(model_id=lora_model_id, max_total_tokens=None, local_path=str(path),
                                   lora_assigned_int_id=global_id_manager.next())


class SeloraLLMServer(LLMServer):
    """Ray's LLMServer with `StoreLoader` as its downloader, one load per adapter per replica,
    unload on Ray's eviction, and its snapshot directory removed on shutdown."""

    async def __init__(self, llm_config, *, engine_cls=None, model_downloader=None):
        from ray import serve

        pin.require()
        remove_stale()
        # Before the engine starts: its worker processes write their selora_* metrics for this replica.
        self._selora_metrics = ReplicaMetrics(serve.get_replica_context().replica_id.unique_id)
        self._selora_locks: dict[str, asyncio.Lock] = {}
        self._selora_loader: StoreLoader | None = None

        def loader(**kwargs) -> StoreLoader:  # Ray constructs its downloader; keep ours to report its fetches
            self._selora_loader = StoreLoader(**kwargs)
            return self._selora_loader

        await super().__init__(llm_config, engine_cls=engine_cls, model_downloader=model_downloader or loader)
        self._selora_metrics.start()

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        from ray import serve

        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            return
        lock = self._selora_locks.setdefault(model_id, asyncio.Lock())
        async with lock:  # concurrent first requests: one load into vLLM, the rest find it loaded
            await super()._maybe_resolve_lora_from_multiplex()
        await self._unload_evicted()

    async def _unload_evicted(self) -> None:
        """Unload from vLLM every adapter Ray's multiplex LRU no longer holds."""
        held = pin.multiplexed_ids(self._load_model)
        loaded = set(self.engine._oai_models.lora_requests) if self.engine is not None else set()
        for model_id in sorted(loaded - held):
            lock = self._selora_locks.setdefault(model_id, asyncio.Lock())
            async with lock:
                if model_id in pin.multiplexed_ids(self._load_model):
                    continue  # requested again meanwhile
                await unload(self.engine, model_id)

    async def selora_adapters(self) -> dict:
        """This replica's adapter state: held by Ray's LRU, loaded in vLLM, fetched from buckets."""
        from ray import serve

        loaded = sorted(self.engine._oai_models.lora_requests) if self.engine is not None else []
        loader = self._selora_loader
        return {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                "held": sorted(pin.multiplexed_ids(self._load_model)), "loaded": loaded,
                "fetches": list(loader.fetches) if loader is not None else []}

    async def __del__(self) -> None:
        self._selora_metrics.close()
        release_snapshot_root()
        await super().__del__()


async def unload(engine, model_id: str) -> None:
    from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

    result = await engine._oai_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=model_id))
    logger.info("unloaded adapter %s from vLLM (evicted by Ray's multiplex LRU): %s", model_id, result)
