"""The OpenAI ingress of the Ray Serve app: Ray's `OpenAiIngress`, listing the adapter store.

- `GET /v1/models` lists the base model and every adapter in the store as `BASE:NAME` (Ray alone
  lists only what an s3 `dynamic_lora_loading_path` holds); `GET /v1/models/BASE:NAME` describes one.
- A request whose `model` is a bare adapter name (what a single `selora-serve`'s clients send) is
  served as `BASE:NAME` when the app serves one base model, so clients move over unchanged.
- With `tenants=FILE` the same `tenants.toml` as `selora-serve --tenants` is enforced by the same
  guard (`vllm_ext.guard.Guard`, as ASGI middleware of this app): 401 without a known key, 404 (the
  body of an adapter that does not exist) for another tenant's adapter, 403 for a tenant on an
  admin route, `/v1/models` filtered per tenant. Keys are compared hashed and never logged.

Adapters are not fetched here: the ingress only lists (one LIST per bucket per few seconds) and
routes; each replica fetches, verifies and decodes its own (`server.StoreLoader`).
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from ray.serve.llm.ingress import OpenAiIngress

from ..store import AdapterStore
from ..vllm_ext.guard import Guard
from . import pin
from .config import adapter_name

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}


def not_found_message(model: str | None) -> str:
    """The message of a 404 for a model the app does not serve, named as the client sent it."""
    return f"The model `{model}` does not exist."


def error_body(status: int, message: str) -> dict:
    """An OpenAI-style error body, as `selora-serve` (vLLM) answers."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": "model",
                      "code": status}}


class RayGuard(Guard):
    """The selora-serve request guard, answering for Ray's ingress: adapter ids are BASE:NAME or
    a bare NAME, and an unknown model's body is this app's."""

    def __init__(self, app, tenants=None, max_body: int | None = None, base_ids: tuple[str, ...] = ()):
        super().__init__(app, tenants, **({"max_body": max_body} if max_body else {}))
        self.base_ids = base_ids

    def allowed(self, principal, model, scope) -> bool:
        if model is not None and model not in self.base_ids and model.split(":", 1)[0] in self.base_ids:
            model = adapter_name(model)
        return principal.may_use(model, self.base_ids)

    def unknown_model_body(self, scope, model) -> dict:
        return error_body(404, not_found_message(model))


class SeloraIngress(OpenAiIngress):
    """Ray's OpenAI ingress with the store's adapters in its listings and bare names accepted."""

    def __init__(self, llm_deployments, model_cards, *, lora_paths=None, adapter_roots=(), **kwargs):
        pin.require()
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kwargs)
        self._store = AdapterStore(list(adapter_roots))

    def _adapter_id(self, model: str) -> str:
        if ":" in model or model in self._model_cards or len(self._model_cards) != 1:
            return model
        return f"{next(iter(self._model_cards))}:{model}"

    async def _process_llm_request(self, body, call_method: str, raw_request=None):
        sent = getattr(body, "model", None)
        if isinstance(sent, str):
            body.model = self._adapter_id(sent)  # the replica's vLLM checks the body's model too
        try:
            return await super()._process_llm_request(body, call_method=call_method, raw_request=raw_request)
        except HTTPException as exc:
            # The replica's loader answers 404/400/503 (`server.StoreLoader`); FastAPI would send
            # {"detail": ...}. Answer OpenAI-style instead, a 404 naming the model as the client sent it
            # (so an adapter that does not exist reads exactly as another tenant's, see RayGuard).
            message = not_found_message(sent) if exc.status_code == 404 else str(exc.detail)
            return JSONResponse(error_body(exc.status_code, message), exc.status_code)

    async def _names(self) -> list[str]:
        return await asyncio.to_thread(self._store.names)

    def _card(self, base: str, name: str):
        """The model card of adapter `name` on the base model `base` (its base's, renamed)."""
        return self._model_cards[base].model_copy(update={"id": f"{base}:{name}", "root": f"{base}:{name}",
                                                          "parent": base})

    async def model(self, model_id: str):
        if model_id in self._model_cards:
            return self._model_cards[model_id]
        base, _, name = self._adapter_id(model_id).partition(":")
        if base not in self._model_cards or name not in await self._names():
            return None
        return self._card(base, name)

    async def models(self):
        listing = await super().models()
        names = await self._names()
        for base in self._model_cards:
            listing.data += [self._card(base, n) for n in names]
        return listing
