"""API-server side: SeLoRA checkpoints are validated before the engine is asked to load them.

vLLM 0.32's `OpenAIServingModels.load_lora_adapter` (behind `POST /v1/load_lora_adapter` and
`--lora-modules`) reports any engine-side load failure as a 500. A SeLoRA directory named there
is handled like a store adapter (`store.checkout.verified_snapshot`): copied into a private snapshot,
validated in full against the served model, and only that snapshot's path is passed on; a
corrupt, truncated or mismatched checkpoint gets a 400 naming the adapter and the reason, and
the engine never sees it. The engine reloads an evicted adapter from its path inside a model
step, so the directory the admin named may change or vanish afterwards without harm. Other
paths go to vLLM unchanged.

`OpenAIServingModels.show_available_models` (`GET /v1/models`) lists only adapters vLLM has
already loaded; with a store configured, the store's other adapters are listed after them
(their `root` is their directory, or their s3:// URL), since any of them can be requested.
"""

from __future__ import annotations

import asyncio
import functools
from http import HTTPStatus
from pathlib import Path

from ..checkpoint import is_selora_checkpoint
from ..store.checkout import verified_snapshot
from ..store import AdapterError, AdapterStore, StoredAdapter

_MARK = "_selora_patched"


def install() -> None:
    """Wrap `OpenAIServingModels.load_lora_adapter` (idempotent)."""
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve import create_error_response

    original = OpenAIServingModels.load_lora_adapter
    if getattr(original, _MARK, False):
        return  # both methods are patched together

    @functools.wraps(original)
    async def load_lora_adapter(self, request, base_model_name=None):
        path = request.lora_path
        if path and is_selora_checkpoint(path):
            lora_config = getattr(getattr(self.engine_client, "vllm_config", None), "lora_config", None)
            found = StoredAdapter(request.lora_name, Path(path), Path(path).parent, "selora")
            try:
                snap = await asyncio.to_thread(
                    verified_snapshot, found, self.model_config.hf_config,
                    getattr(lora_config, "max_lora_rank", None),
                )
            except AdapterError as exc:
                return create_error_response(
                    message=str(exc), err_type="BadRequestError", status_code=HTTPStatus.BAD_REQUEST,
                    param="lora_path",
                )
            request = request.model_copy(update={"lora_path": str(snap)})
        return await original(self, request, base_model_name)

    setattr(load_lora_adapter, _MARK, True)
    OpenAIServingModels.load_lora_adapter = load_lora_adapter

    show = OpenAIServingModels.show_available_models
    store = AdapterStore.from_env()
    if store is None:
        return

    @functools.wraps(show)
    async def show_available_models(self):
        from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelPermission

        listing = await show(self)
        known = {card.id for card in listing.data}
        for name, found in (await asyncio.to_thread(store.adapters)).items():
            if name not in known:
                root = getattr(found, "url", None) or str(found.path)  # a bucket's adapter: its URL
                listing.data.append(ModelCard(
                    id=name, root=root, parent=self.base_model_paths[0].name, permission=[ModelPermission()],
                ))
        return listing

    setattr(show_available_models, _MARK, True)
    OpenAIServingModels.show_available_models = show_available_models
