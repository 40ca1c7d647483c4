"""API-server side: SeLoRA checkpoints are validated before the engine is asked to load them.

vLLM 0.32's `OpenAIServingModels.load_lora_adapter` (behind `POST /v1/load_lora_adapter` and
`--lora-modules`) reports any engine-side load failure as a 500. For a SeLoRA directory we first
run the full validation here, against the served model's HF config, and answer a corrupt,
truncated or mismatched checkpoint with a 400 that names the adapter and the reason; the engine
never sees it, so every other adapter keeps being served. Other paths go to vLLM unchanged.

`OpenAIServingModels.show_available_models` (`GET /v1/models`) lists only adapters vLLM has
already loaded; with a store configured, the store's other adapters are listed after them
(their `root` is their directory), since any of them can be requested.
"""

from __future__ import annotations

import asyncio
import functools
from http import HTTPStatus

from ..checkpoint import is_selora_checkpoint
from .store import AdapterError, AdapterStore, validate

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
            max_rank = getattr(getattr(self.engine_client, "vllm_config", None), "lora_config", None)
            try:
                await asyncio.to_thread(
                    validate, request.lora_name, path, self.model_config.hf_config,
                    max_rank=getattr(max_rank, "max_lora_rank", None),
                )
            except AdapterError as exc:
                return create_error_response(
                    message=str(exc), err_type="BadRequestError", status_code=HTTPStatus.BAD_REQUEST,
                    param="lora_path",
                )
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
                listing.data.append(ModelCard(
                    id=name, root=str(found.path), parent=self.base_model_paths[0].name,
                    permission=[ModelPermission()],
                ))
        return listing

    setattr(show_available_models, _MARK, True)
    OpenAIServingModels.show_available_models = show_available_models
