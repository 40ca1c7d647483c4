"""The `vllm.endpoint_plugins` entry point: the adapter admin API.

    GET  /v1/selora/adapters                 every store adapter: state and facts
    POST /v1/selora/adapters/{name}/load     find, validate and load into the host cache
    POST /v1/selora/adapters/{name}/unload   drop the name AND the weights (engine remove_lora)
    POST /v1/selora/adapters/{name}/pin      load and pin (never evicted from cache or slot)
    POST /v1/selora/adapters/{name}/unpin    unpin (vLLM has no unpin: remove, then load again)

Pins are capped at `--max-loras` - 1: with every slot pinned vLLM's worker raises "All items are
pinned" in the next step that needs another adapter, which stops the engine; `pin` answers 409
instead (and `selora-serve --pin` refuses too many at start-up).

State per adapter: `on_disk` (in the store: a local root or a bucket), `loaded` (vLLM knows the
name), `host_cache` (its weights are in the engine's LoRA cache, from
`engine_client.list_loras()`), `slot` (it holds one of the `--max-loras` slots; vLLM 0.32's engine
client cannot tell, so the worker publishes its slot occupancy as the `selora_adapter_in_slot`
metric and this reads it back; null when metrics are not in multiprocess mode, i.e. not started by
`selora-serve`), `pinned` (pinned through this API or --pin). vLLM's own `/v1/unload_lora_adapter`
only forgets the name and leaves the weights resident; `unload` here also calls `remove_lora`, so
the memory is really freed.

vLLM loads endpoint plugins only when named in VLLM_PLUGINS (`selora-serve` sets it). Adapters
named in SELORA_PINNED are loaded and pinned when the server starts. Start-up also tells `metrics`
the served model name, under which requests to the base model are counted.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in the
# route signatures defined inside `attach_router`, not a string it cannot resolve there.

import asyncio
import os

from ..checkpoint.format import bytes_on_disk
from ..checkpoint.manifest import CheckpointError, read_manifest
from . import metrics
from ..store import AdapterStore
from ..store.verify import describe

PLUGIN_NAME = "selora_admin"
ENV_PINNED = "SELORA_PINNED"
PREFIX = "/v1/selora/adapters"


def _facts(store, found) -> dict:
    """What the admin listing shows of an adapter: for a SeLoRA one its manifest's facts (for one
    in object storage only once its version is in the local cache: listings make no GETs)."""
    remote = getattr(found, "url", None)
    where = {"source": remote} if remote else {}
    if found.kind != "selora":
        return {"kind": "peft", **where}
    if remote and not store.cache.has(found.key):
        return {"kind": "selora", **where, "bytes": found.nbytes or None, "cached": False}
    try:
        path = store.cache.path(found.key) if remote else found.path
        m = read_manifest(path)
        nbytes = bytes_on_disk(path)
    except CheckpointError as exc:
        return {"kind": "selora", **where, "error": describe(exc)}
    c = m.config
    return {
        "kind": "selora", "basis": c.basis, "wavelet": c.wavelet, "eta": c.eta, "rank": c.r,
        "alpha": c.alpha, "variant": c.variant, "modules": len(m.modules),
        "parameters": m.num_coefficients(), "bytes": nbytes, **where, **({"cached": True} if remote else {}),
    }


class AdminPlugin:
    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def __init__(self):
        self.store = AdapterStore.from_env()
        self.pinned: set[str] = set()
        self.engine = None
        # One admin mutation at a time: an unload racing a pin could otherwise leave the worker
        # with a pin the admin state no longer counts, and a worker whose LoRA slots are all
        # pinned fails its next step for every tenant ("All items are pinned").
        self.mutating = asyncio.Lock()

    def attach_router(self, app) -> None:
        from fastapi import APIRouter, Request
        from fastapi.responses import JSONResponse

        router = APIRouter()

        def error(status: int, message: str, err_type: str):
            return JSONResponse({"error": {"message": message, "type": err_type, "param": "name", "code": status}}, status)

        async def resolve(request: Request, name: str):
            """The LoRARequest for `name`, loading it if needed, or an error response."""
            from vllm.entrypoints.serve.engine.protocol import ErrorResponse
            from vllm.exceptions import VLLMValidationError

            models = request.app.state.openai_serving_models
            try:
                result = await models.resolve_lora(name)
            except VLLMValidationError as exc:
                return None, error(400, str(exc).removesuffix(" (parameter=model)"), "BadRequestError")
            if isinstance(result, ErrorResponse):
                return None, JSONResponse(result.model_dump(), result.error.code)
            return result, None

        @router.get(PREFIX)
        async def list_adapters(request: Request):
            models = request.app.state.openai_serving_models
            cached = await self.engine.list_loras()
            in_slot = await asyncio.to_thread(metrics.slot_ids)
            stored = await asyncio.to_thread(self.store.adapters) if self.store else {}
            out = []
            for name in sorted(set(stored) | set(models.lora_requests)):
                found = stored.get(name)
                lora = models.lora_requests.get(name)
                out.append({
                    "name": name,
                    "state": {
                        "on_disk": found is not None, "loaded": lora is not None,
                        "host_cache": lora is not None and lora.lora_int_id in cached,
                        "slot": None if in_slot is None else (lora is not None and lora.lora_int_id in in_slot),
                        "pinned": name in self.pinned,
                    },
                    "facts": _facts(self.store, found) if found else {},
                })
            return {"object": "list", "data": out}

        @router.post(PREFIX + "/{name:path}/load")
        async def load(request: Request, name: str):
            lora, err = await resolve(request, name)
            return err or {"name": name, "loaded": True}

        @router.post(PREFIX + "/{name:path}/unload")
        async def unload(request: Request, name: str):
            models = request.app.state.openai_serving_models
            async with self.mutating, models.lora_resolver_lock[name]:
                lora = models.lora_requests.pop(name, None)
                if lora is None:
                    return error(404, f"adapter {name!r} is not loaded", "NotFoundError")
                await self.engine.remove_lora(lora.lora_int_id)
                self.pinned.discard(name)
            return {"name": name, "unloaded": True}

        @router.post(PREFIX + "/{name:path}/pin")
        async def pin(request: Request, name: str):
            async with self.mutating:
                limit = self.engine.vllm_config.lora_config.max_loras - 1
                if name not in self.pinned and len(self.pinned) >= limit:
                    return error(409, f"cannot pin {name!r}: {len(self.pinned)} adapter(s) pinned already and at most "
                                 f"--max-loras - 1 = {limit} may be, so that one LoRA slot stays free", "ConflictError")
                lora, err = await resolve(request, name)
                if err:
                    return err
                # Known by name is not resident: the engine's host cache may have evicted it since,
                # and vLLM pins only resident adapters. add_lora reloads it, or does nothing.
                await self.engine.add_lora(lora)
                await self.engine.pin_lora(lora.lora_int_id)
                self.pinned.add(name)
            return {"name": name, "pinned": True}

        @router.post(PREFIX + "/{name:path}/unpin")
        async def unpin(request: Request, name: str):
            models = request.app.state.openai_serving_models
            async with self.mutating:
                lora = models.lora_requests.get(name)
                if lora is None or name not in self.pinned:
                    return error(404, f"adapter {name!r} is not pinned", "NotFoundError")
                await self.engine.remove_lora(lora.lora_int_id)
                await self.engine.add_lora(lora)
                self.pinned.discard(name)
            return {"name": name, "pinned": False}

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        self.engine = engine_client
        metrics.set_base_name(engine_client.model_config.served_model_name)
        models = getattr(state, "openai_serving_models", None)
        for name in filter(None, os.environ.get(ENV_PINNED, "").split(",")):
            lora = await models.resolve_lora(name)
            if not hasattr(lora, "lora_int_id"):
                raise RuntimeError(f"--pin {name}: {lora.error.message}")
            await engine_client.pin_lora(lora.lora_int_id)
            self.pinned.add(name)
