"""A vLLM LoRAResolver that serves the adapter store by name.

vLLM 0.32 consults resolvers (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1) when a request names a
model it does not know; it then loads the returned LoRARequest and remembers the name. This
resolver looks the name up in the store on every such call (so adapters copied in later are
found), and validates a SeLoRA checkpoint against the served base model before returning it.

Contract with vLLM's `OpenAIServingModels.resolve_lora`: returning None means "not mine" (vLLM
answers 404 if no resolver knows the name); an exception raised here propagates out of the
request handler, and we raise vLLM's own `VLLMValidationError` so its exception handlers answer
400 with an OpenAI-style body naming the adapter and the reason, or, when an object store cannot
be reached (`store.StoreUnavailable`), its `GracefulHTTPError` so they answer 503. (Returning
the adapter and letting the engine fail would give only vLLM's generic "was found but could not
be loaded".) An adapter in object storage is fetched into the local adapter cache first
(`store.s3.cached_copy`), in this process: the engine only ever sees local snapshots.

The LoRARequest returned points at a private snapshot of the adapter (`store.checkout`, under
SELORA_SNAPSHOT_DIR), validated in full on the bytes the snapshot copied (one pass). vLLM's worker
reloads an adapter from its path whenever its host cache evicted it, inside a model step where a
failure would stop the engine for every tenant; from the snapshot that reload cannot meet a file
deleted, truncated or half-replaced in the store since. Snapshots are content-addressed and kept
while the server runs: a request still in flight may make the worker reload an adapter after it
was unloaded, from that path.
"""

from __future__ import annotations

import asyncio
import logging

from ..base_model import facts_of_model
from ..store import AdapterError, AdapterStore
from ..store.catalog import ENV_DIRS, ENV_MAX_RANK, max_rank_from_env
from ..store.checkout import ENV_SNAPSHOTS, checkout
from . import metrics

logger = logging.getLogger("vllm.selora_serve")

RESOLVER_NAME = "selora-store"


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
            path = checkout(self.store, lora_name, facts_of_model(base_model_name), self.max_rank, metrics.observe_fetch)
            if path is None:
                return None
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
    resolver = _make_resolver_class()(store, max_rank_from_env())
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    return True


__all__ = ["ENV_DIRS", "ENV_MAX_RANK", "ENV_SNAPSHOTS", "RESOLVER_NAME", "register_from_env"]
