"""The `vllm.general_plugins` entry point: `register()`, run by vLLM in every process it starts.

vLLM calls it in the API server, the engine core and every worker, possibly more than once per
process, so it is idempotent and cheap: it checks the hooked internals (`pin`), patches vLLM's
LoRA loading (`loading`, `frontend`), fixes its CPU LoRA kernels for base-model tokens (`cpu_lora`) and where the adapter metrics are taken (`metrics`), and registers the store resolver when SELORA_ADAPTER_DIRS
is set. A changed vLLM makes it raise, which stops the engine with the reason instead of
serving adapters wrongly.
"""

from __future__ import annotations

import logging

# A child of vLLM's logger, so it reaches the handlers vLLM configures in every process.
logger = logging.getLogger("vllm.selora_serve")

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from . import cpu_lora, frontend, loading, metrics, pin, resolver

    pin.require_hooks()
    if not pin.version_matches():
        import vllm

        logger.warning(
            "selora-serve is pinned to vLLM %s; running on %s whose hooked internals look unchanged",
            pin.SUPPORTED_VLLM, vllm.__version__,
        )
    loading.install()
    cpu_lora.install()
    frontend.install()
    metrics.install()
    resolver.register_from_env()
    _registered = True
