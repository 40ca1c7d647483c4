"""The Ray release the Serve app is written against, and a check that its internals still fit.

The app uses Ray Serve LLM's public classes (`LLMConfig`, `LLMServer`, `OpenAiIngress`,
`build_openai_app`) but overrides or reads some of their internals; each is listed in `HOOKS` and
checked by `require()` when the app is built and again in each replica, so a Ray upgrade that moved
one fails with its name instead of serving adapters wrongly (as `vllm_ext.pin` does for vLLM).
"""

from __future__ import annotations

from ..pinning import Hook, check_hooks

SUPPORTED_RAY = "2.60.0"
MULTIPLEX_ATTR = "__serve_multiplex_wrapper"

_SERVER = "ray.llm._internal.serve.core.server.llm_server"
HOOKS: tuple[Hook, ...] = (
    Hook(_SERVER, "LLMServer.__init__", ("self", "llm_config", "engine_cls", "model_downloader"),
         why="SeloraLLMServer passes its StoreLoader as the model downloader"),
    Hook(_SERVER, "LLMServer._init_multiplex_loader", ("self", "model_downloader_cls"),
         ("model_downloader_cls(", "download_timeout_s=", "max_tries=", "load_model_from_config(",
          "lora_model_id=lora_model_id", "llm_config=self._llm_config", "serve.multiplexed(",
          "self._load_model = serve.multiplexed("),
         why="StoreLoader's constructor and load_model_from_config are called exactly so; _load_model is "
             "the multiplexed loader whose LRU the server reads"),
    Hook(_SERVER, "LLMServer._maybe_resolve_lora_from_multiplex", ("self",),
         ("serve.get_multiplexed_model_id()", "await self._load_model(", "await self.engine.resolve_lora("),
         why="overridden to load each adapter once per replica and unload what Ray evicted"),
    Hook(_SERVER, "LLMServer._run_request", None, ("await self._maybe_resolve_lora_from_multiplex()",),
         why="every chat/completion request resolves its adapter through the overridden method"),
    Hook(_SERVER, "_ResolveLoRAMiddleware.__call__", None,
         ("await self._server._maybe_resolve_lora_from_multiplex()", "except HTTPException as exc"),
         why="so do native vLLM routes; an HTTPException keeps its status"),
    Hook(_SERVER, "LLMServer.__del__", ("self",), why="the server removes its snapshots, then calls it"),
    Hook("ray.llm._internal.serve.engines.vllm.vllm_engine", "VLLMEngine.resolve_lora", ("self", "disk_lora_model"),
         ("if disk_lora_model.model_id in self._oai_models.lora_requests:", "self._oai_models.load_lora_adapter(",
          "lora_path=disk_lora_model.local_path"),
         why="loads the snapshot path StoreLoader returns; its check-then-load is the race the lock closes"),
    Hook("vllm.entrypoints.openai.models.serving", "OpenAIServingModels.unload_lora_adapter", None,
         ("del self.lora_requests[lora_name]",),
         why="the server unloads what Ray evicted through it, and reads lora_requests for what is loaded"),
    Hook("vllm.entrypoints.serve.lora.protocol", "UnloadLoRAAdapterRequest", why="its argument"),
    Hook("ray.llm._internal.serve.core.configs.llm_config", "DiskMultiplexConfig", None,
         ("model_id: str", "max_total_tokens: Optional[int]", "local_path: str", "lora_assigned_int_id: int"),
         why="what StoreLoader returns"),
    Hook("ray.llm._internal.common.models", "global_id_manager", why="the LoRA int ids StoreLoader assigns"),
    Hook("ray.serve.api", "multiplexed", None, (f'multiplex_attr = "{MULTIPLEX_ATTR}"', "multiplex_object = func"),
         why="the multiplex LRU lives on the wrapped loader function under this attribute"),
    Hook("ray.serve.multiplex", "_ModelMultiplexWrapper.__init__", None, ("self.models = OrderedDict()",),
         why="its keys are the adapter ids Ray holds on this replica"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress._process_llm_request",
         ("self", "body", "call_method", "raw_request"), ("self._get_response(",),
         why="overridden to accept a bare adapter name (BASE: is added to the body's model)"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress._get_response", None,
         ("model_id = await self._get_model_id(body.model)",),
         why="the body's model, rewritten above, is what routes the request"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress.models", ("self",),
         why="overridden to list the adapter store"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress.model", ("self", "model_id"),
         why="overridden to describe store adapters"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress.completions", ("self", "body", "request"),
         why="wrapped with the tenant check"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress.chat", ("self", "body", "request"),
         why="wrapped with the tenant check"),
    Hook("ray.llm._internal.serve.core.ingress.ingress", "OpenAiIngress.model_data", ("self", "model"),
         why="wrapped with the tenant check"),
    Hook("ray.llm._internal.common.utils.lora_utils", "get_base_model_id", ("model_id",),
         ('model_id.split(":")[0]',), why="adapter ids are BASE:NAME"),
)


def require() -> None:
    """Raise RuntimeError naming every hooked Ray internal that changed."""
    import ray

    problems = check_hooks(HOOKS)
    if problems:
        raise RuntimeError(
            f"selora-serve's Ray integration was written against Ray {SUPPORTED_RAY}; the installed Ray "
            f"{ray.__version__} changed internals it uses:\n  - " + "\n  - ".join(problems)
            + f"\nInstall 'ray[serve]=={SUPPORTED_RAY}' (pip install 'selora-serve[ray]'), or update selora_serve/ray."
        )


def version_matches() -> bool:
    import ray

    return ray.__version__ == SUPPORTED_RAY


def multiplexed_ids(load_model) -> set[str]:
    """The adapter ids Ray's multiplex LRU holds for the `serve.multiplexed` loader `load_model`."""
    wrapper = getattr(getattr(load_model, "__wrapped__", None), MULTIPLEX_ATTR, None)
    return set(wrapper.models) if wrapper is not None else set()
