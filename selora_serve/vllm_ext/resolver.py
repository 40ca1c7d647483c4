"""A vLLM LoRAResolver that serves the adapter store by name.

vLLM 0.32 consults resolvers (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1) when a request names a
model it does not know; it then loads the returned LoRARequest and remembers the name. This
resolver looks the name up in the store on every such call (so adapters copied in later are
found), and validates a SeLoRA checkpoint against the served base model before returning it.

Contract with vLLM's `OpenAIServingModels.resolve_lora`: returning None means "not mine" (vLLM
answers 404 if no resolver knows the name); an exception raised here propagates out of the
request handler, and we raise vLLM's own `VLLMValidationError` so its exception handlers answer
400 with an OpenAI-style body naming the adapter and the reason, or, when an object store cannot
be reached (`remote.StoreUnavailable`), its `GracefulHTTPError` so they answer 503. (Returning
the adapter and letting the engine fail would give only vLLM's generic "was found but could not
be loaded".) An adapter in object storage is fetched into the local adapter cache first
(`remote.cached_copy`), in this process: the engine only ever sees local snapshots.

The LoRARequest returned points at a private snapshot of the adapter (`store.snapshot`, under
SELORA_SNAPSHOT_DIR), validated in full on the bytes the snapshot copied (one pass). vLLM's worker
reloads an adapter from its path whenever its host cache evicted it, inside a model step where a
failure would stop the engine for every tenant; from the snapshot that reload cannot meet a file
deleted, truncated or half-replaced in the store since. Snapshots are content-addressed and kept
while the server runs: a request still in flight may make the worker reload an adapter after it
was unloaded, from that path.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..envdir import env_scratch_dir
from ..base_model import BaseFacts
from . import metrics
from .snapshot import snapshot
from .store import ENV_DIRS, AdapterError, AdapterStore

logger = logging.getLogger("vllm.selora_serve")

RESOLVER_NAME = "selora-store"
ENV_MAX_RANK = "SELORA_MAX_LORA_RANK"  # set by `selora-serve`; checked before the engine is asked
ENV_SNAPSHOTS = "SELORA_SNAPSHOT_DIR"  # set by `selora-serve`; else a temporary directory per process
_own_root: Path | None = None


def snapshot_dir(environ=os.environ):
    """Run the body with SELORA_SNAPSHOT_DIR set to a fresh directory, removed afterwards."""
    return env_scratch_dir(ENV_SNAPSHOTS, "selora-serve-snapshots-", environ)


def snapshot_root() -> Path:
    global _own_root
    if os.environ.get(ENV_SNAPSHOTS):
        return Path(os.environ[ENV_SNAPSHOTS])
    if _own_root is None:  # plain `vllm serve` with this plugin: our own, removed at exit
        _own_root = Path(tempfile.mkdtemp(prefix="selora-serve-snapshots-"))
        atexit.register(shutil.rmtree, _own_root, True)
    return _own_root


def verified_snapshot(found, base, max_rank: int | None = None, cache=None) -> Path:
    """Snapshot `found` (a StoredAdapter, or a RemoteAdapter fetched first through `cache`, an
    AdapterCache) under `snapshot_root()`; a SeLoRA snapshot is validated in full for the base
    model `base` (a config or its BaseFacts) in the same pass and marked verified. Raises
    AdapterError naming `found.name` and the reason (StoreUnavailable: 503), FileNotFoundError
    if a remote adapter vanished from its bucket since it was listed."""
    from .remote import RemoteAdapter, cached_copy

    timings: dict[str, float] = {}
    facts = BaseFacts.of(base) if found.kind == "selora" else None
    if isinstance(found, RemoteAdapter):
        with cached_copy(found, cache) as (local, fetched):
            path = snapshot(local, snapshot_root(), base=facts, max_rank=max_rank, timings=timings)
        if fetched.nbytes:
            metrics.observe_fetch(found.name, fetched.nbytes, fetched.seconds)
    else:
        path = snapshot(found, snapshot_root(), base=facts, max_rank=max_rank, timings=timings)
    logger.info("snapshot of adapter %s in %.1f ms, verified in %.1f ms", found.name, 1e3 * timings.get("copy", 0.0),
                1e3 * timings.get("verify", 0.0))
    return path


@functools.lru_cache(maxsize=4)
def _base_facts(base_model_name: str) -> BaseFacts:
    """The served base model's `BaseFacts` (vLLM passes its model path or hub id)."""
    from transformers import AutoConfig

    return BaseFacts.of(AutoConfig.from_pretrained(base_model_name))


def http_error(exc: AdapterError):
    """The vLLM exception its API server answers with `exc.status` and an OpenAI-style body: 400
    (VLLMValidationError) for a bad adapter, 503 (GracefulHTTPError) for a store that cannot be
    reached, so that clients and load balancers retry."""
    from http import HTTPStatus

    from vllm.exceptions import GracefulHTTPError, VLLMValidationError

    if exc.status == 503:
        return GracefulHTTPError(str(exc), HTTPStatus.SERVICE_UNAVAILABLE)
    return VLLMValidationError(str(exc), parameter="model")


def _make_resolver_class():
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class StoreResolver(LoRAResolver):
        def __init__(self, store: AdapterStore, max_rank: int | None = None):
            self.store = store
            self.max_rank = max_rank

        def _resolve(self, base_model_name: str, lora_name: str):
            found = self.store.find(lora_name)
            if found is None:
                return None
            try:
                cache = self.store.cache if self.store.remote_roots else None
                path = verified_snapshot(found, _base_facts(base_model_name), self.max_rank, cache)
            except FileNotFoundError:
                return None  # deleted from its bucket since it was listed
            # The id is a placeholder: vLLM assigns the real one before loading.
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

        async def resolve_lora(self, base_model_name: str, lora_name: str):
            try:
                return await asyncio.to_thread(self._resolve, base_model_name, lora_name)
            except AdapterError as exc:
                raise http_error(exc) from None

    return StoreResolver


def register_from_env() -> bool:
    """Register the store resolver if SELORA_ADAPTER_DIRS names a store; True if registered."""
    store = AdapterStore.from_env()
    if store is None:
        return False
    from vllm.lora.resolver import LoRAResolverRegistry

    if RESOLVER_NAME in LoRAResolverRegistry.get_supported_resolvers():
        return True
    rank = os.environ.get(ENV_MAX_RANK)
    resolver = _make_resolver_class()(store, int(rank) if rank else None)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    return True


__all__ = ["ENV_DIRS", "ENV_MAX_RANK", "ENV_SNAPSHOTS", "RESOLVER_NAME", "register_from_env", "snapshot_dir",
           "verified_snapshot"]
