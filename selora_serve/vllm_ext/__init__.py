"""The vLLM integration: the only package of selora-serve that imports vLLM.

Nothing here imports vLLM at import time; each module imports it inside the functions that need
it, so the core package installs and tests without vLLM. The pieces:

- `pin`: the vLLM release this integration is written against and a check of every internal it
  touches (run by the plugin before patching anything).
- `plugin`: the `vllm.general_plugins` entry point, loaded by vLLM in every process.
- `loading`: worker side, decoding a SeLoRA checkpoint into vLLM's own LoRAModel in memory.
- `host_cache`: worker side, optionally holding cached SeLoRA adapters as coefficients and
  decoding them on activation (`--host-cache-form spectral`).
- `frontend`: API-server side, validating SeLoRA checkpoints before they reach the engine.
- `metrics`: the Prometheus metrics of adapter serving, taken in the worker and the API server.
- `resolver`: the vLLM LoRAResolver that serves the adapter store (`selora_serve.store`, which
  imports no vLLM and serves Ray's front end too) by name.
"""
