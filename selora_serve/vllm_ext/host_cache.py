"""The form SeLoRA adapters take in vLLM's host cache: dense (vLLM's own) or spectral.

vLLM 0.32 keeps up to --max-cpu-loras LoRAModels in host memory (the LRU
`LRUCacheLoRAModelManager._registered_adapters`), each holding its dense A and B, already packed
(q/k/v -> qkv_proj), scaled and, on GPU hosts, pinned; activating one copies them into a LoRA slot
(`activate_adapter` -> `set_lora` per module).

With SELORA_HOST_CACHE_FORM=spectral (`selora-serve --host-cache-form spectral`), a SeLoRA
adapter's LoRAModel keeps only its spectral coefficients while it waits in that cache: its `loras`
dict is empty and a `SpectralSource` on it (the coefficients, and the arguments vLLM built it
with) rebuilds the dense weights exactly as its first load did (same decode, same
`from_lora_tensors`, same packing) just before vLLM's own `activate_adapter` copies them into the
slot; they are dropped right after. Contract:

- host memory per cached SeLoRA adapter: its coefficients as stored (`packed.PackedAdapter`, one
  anonymous mapping per adapter): (1 - eta) of its dense bytes at the coefficients' dtype, or its
  int8 / int4 values and float32 scales (`selora_adapter_resident_bytes{tier="host"}` reports
  exactly that);
- every activation of an adapter that is not in a slot decodes it again (the load-time decode,
  dequantisation included, without file I/O or validation, on the CPU); a request for an adapter already in its slot
  costs nothing more. The first activation after a load uses the weights that load decoded;
- the slot contents are identical in both forms (tested): only when and how often the decode
  runs differs;
- dense PEFT adapters and vLLM's warm-up dummies are untouched.

With SELORA_HOST_CACHE_BYTES=N (`selora-serve --host-cache-bytes SIZE`) the host cache is also
bounded in bytes: after each add, the least recently used adapters that hold no slot are evicted
until what the cache holds (`metrics.weight_bytes`: coefficients as stored for SeLoRA adapters in
spectral form, dense A and B otherwise) is at most N. The adapter just added and the adapters in
slots are never evicted for it, so the cache may exceed N by at most those (a single adapter larger
than N is still served). vLLM's own count bound (--max-cpu-loras) applies as well; `plan_store`
lifts it when only bytes are given.

The manager class is chosen through `LRUCacheWorkerLoRAManager._manager_cls`, set on the
instance by `loading.install`'s wrapper; nothing else of vLLM is replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

ENV_HOST_CACHE_FORM = "SELORA_HOST_CACHE_FORM"
ENV_HOST_CACHE_BYTES = "SELORA_HOST_CACHE_BYTES"
HOST_CACHE_FORMS = ("dense", "spectral")
SOURCE_ATTR = "_selora_spectral_source"


def host_cache_form(environ=os.environ) -> str:
    """The configured form ('dense' unless SELORA_HOST_CACHE_FORM says otherwise)."""
    form = environ.get(ENV_HOST_CACHE_FORM, "").strip().lower() or "dense"
    if form not in HOST_CACHE_FORMS:
        raise ValueError(f"{ENV_HOST_CACHE_FORM}={environ[ENV_HOST_CACHE_FORM]!r}: expected one of "
                         f"{', '.join(HOST_CACHE_FORMS)}")
    return form


def host_cache_bytes(environ=os.environ) -> int | None:
    """The configured byte bound of the host cache (None: only vLLM's count bound)."""
    raw = environ.get(ENV_HOST_CACHE_BYTES, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV_HOST_CACHE_BYTES}={raw!r}: expected a positive number of bytes")
    return int(raw)


@dataclass
class SpectralSource:
    """What a LoRAModel held in spectral form is rebuilt from.

    `rebuild()` returns a new LoRAModel (same id) from the coefficients, built the way the first
    load built its own; `nbytes` is the coefficients' size, what the cache holds.
    """

    adapter: Any  # packed.PackedAdapter: the coefficients as stored (quantised ones stay so)
    rebuild: Callable[[], Any]

    @property
    def nbytes(self) -> int:
        return self.adapter.nbytes


def attach(lora_model, source: SpectralSource) -> None:
    """Mark `lora_model` to be held in spectral form once it has been activated."""
    setattr(lora_model, SOURCE_ATTR, source)


def source_of(lora_model) -> SpectralSource | None:
    return getattr(lora_model, SOURCE_ATTR, None)


def spectral_manager_class(base_cls: type) -> type:
    """A subclass of vLLM's LoRA model manager `base_cls` that holds SeLoRA adapters in spectral
    form outside their slots (see the module docstring)."""

    class SpectralHostLoRAModelManager(base_cls):
        def activate_adapter(self, lora_id: int) -> bool:
            lora = self._registered_adapters.get(lora_id)
            source = None if lora is None else source_of(lora)
            if source is None or lora_id in self._active_adapters:
                return super().activate_adapter(lora_id)
            if not lora.loras:
                dense = source.rebuild()
                self._create_merged_loras_inplace(dense)  # packing, scaling, pinning, as on add
                lora.loras = dense.loras
            try:
                return super().activate_adapter(lora_id)
            finally:
                lora.loras = {}  # the slot holds its copy now; keep only the coefficients

    SpectralHostLoRAModelManager.__qualname__ = SpectralHostLoRAModelManager.__name__ = (
        f"SpectralHost{base_cls.__name__}")
    return SpectralHostLoRAModelManager


def bounded_manager_class(base_cls: type, budget: int) -> type:
    """A subclass of vLLM's LoRA model manager `base_cls` whose host cache holds at most `budget`
    bytes beyond the adapter just added and those in slots (see the module docstring)."""
    from .metrics import weight_bytes

    class ByteBoundedLoRAModelManager(base_cls):
        host_cache_budget = budget

        def add_adapter(self, lora) -> bool:
            added = super().add_adapter(lora)
            if added:
                self._evict_over_budget(keep=lora.id)
            return added

        def _evict_over_budget(self, keep: int) -> None:
            cache = self._registered_adapters
            held = {key: weight_bytes(model) for key, model in cache.cache.items()}
            total = sum(held.values())
            for key in list(cache.order):  # least recently used first
                if total <= budget:
                    break
                if key == keep or key in self._active_adapters or key in cache.pinned_items:
                    continue
                cache.pop(key)  # vLLM's own removal: deactivates it and counts as an eviction
                total -= held[key]

    ByteBoundedLoRAModelManager.__qualname__ = ByteBoundedLoRAModelManager.__name__ = (
        f"ByteBounded{base_cls.__name__}")
    return ByteBoundedLoRAModelManager


__all__ = ["ENV_HOST_CACHE_BYTES", "ENV_HOST_CACHE_FORM", "bounded_manager_class", "host_cache_bytes", "HOST_CACHE_FORMS", "SpectralSource", "attach", "host_cache_form", "source_of",
           "spectral_manager_class"]
