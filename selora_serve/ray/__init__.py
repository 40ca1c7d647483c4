"""SeLoRA adapters on Ray Serve LLM: the only package of selora-serve that imports Ray.

    serve run selora_serve.ray:build_app model=/models/smollm2 adapters=/srv/adapters,s3://bucket/prod \
        [model_id=smollm2] [tenants=tenants.toml] [num_replicas=2] [max_loras=4] ...

Ray does the replicas, autoscaling, restarts and adapter-affinity routing (its LoRA multiplexing);
selora-serve keeps the store, verification, decoding (the vLLM plugin, in each replica's engine)
and the tenant rules. The pieces:

- `config`: the builder's arguments (`AppConfig`), validated before Ray is asked anything;
- `app`: the Serve application, from Ray Serve LLM's public pieces and selora-serve's own planning;
- `server`: the model replica (`SeloraLLMServer`, Ray's LLMServer with a store-backed loader);
- `ingress`: the OpenAI ingress (`SeloraIngress`: store listings, bare names, tenants);
- `pin`: the Ray release this is written against and a check of every internal it uses.

Ray is imported lazily: `import selora_serve.ray` costs nothing without the `ray` extra.
"""

from __future__ import annotations

from typing import Any


def build_app(args: dict[str, Any]):
    """Ray Serve's application builder (`serve run selora_serve.ray:build_app key=value ...`, or
    `import_path: selora_serve.ray:build_app` with `args:` in a Serve config file)."""
    from .app import build
    from .config import AppConfig

    return build(AppConfig.from_args(args or {}))


__all__ = ["build_app"]
