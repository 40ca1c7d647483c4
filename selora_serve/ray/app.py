"""Build the Ray Serve application: one `LLMServer` deployment per base model and the OpenAI ingress.

    app = build(AppConfig.from_args({"model": DIR, "adapters": "ROOT[,ROOT]"}))   # a Serve Application

Composed from Ray Serve LLM's public pieces, as its docs compose a custom ingress
(`build_llm_deployment` + `make_fastapi_ingress` + `serve.deployment(...).bind`): the engine
options come from `serve.plan.plan_store`, the planning `selora-serve` itself uses (rank limit,
slots and host cache from the store; float32 and an explicit KV cache on CPU), so the two front
ends cannot drift; the replica's environment carries the store exactly as `selora-serve` hands it
to vLLM. Ray's own `dynamic_lora_loading_path` is not used (it takes only cloud URIs and needs
adapter_config.json): `server.StoreLoader` answers from the store instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..serve.plan import on_cpu, plan_store
from ..store.catalog import ENV_CACHE_BYTES, ENV_CACHE_DIR, ENV_DIRS, ENV_MAX_RANK
from ..vllm_ext.host_cache import ENV_HOST_CACHE_BYTES, ENV_HOST_CACHE_FORM
from .config import AppConfig

# What a replica's vLLM needs of `plan_store`'s environment (the rest drives selora-serve's own
# vLLM API server, which Ray replaces: runtime LoRA updating, endpoint plugins).
REPLICA_ENV = (ENV_DIRS, ENV_CACHE_DIR, ENV_CACHE_BYTES, ENV_MAX_RANK, ENV_HOST_CACHE_FORM, ENV_HOST_CACHE_BYTES)
# Passed on to replicas when set where the app is built (loopback-only clusters, S3 endpoints).
INHERITED_ENV = ("VLLM_HOST_IP", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ALLOW_HTTP", "SELORA_ADAPTER_FETCH_TIMEOUT", "VLLM_CPU_OMP_THREADS_BIND")


def engine_kwargs(argv: list[str]) -> dict:
    """vLLM engine keyword arguments from vLLM command-line options, parsed by vLLM's own parser
    (so "2G" and flags mean what they mean to `vllm serve`); only what differs from its defaults."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    defaults, given = vars(parser.parse_args([])), vars(parser.parse_args(argv))
    return {k: v for k, v in given.items() if defaults.get(k) != v and k != "model"}


def llm_config(cfg: AppConfig):
    """The `ray.serve.llm.LLMConfig` of the model deployment."""
    from ray.serve.llm import LLMConfig

    path = Path(cfg.model).expanduser()
    if (path.is_absolute() or cfg.model.startswith((".", "~"))) and not (path / "config.json").is_file():
        raise ValueError(f"model={cfg.model}: no config.json there; expected a Hugging Face model directory "
                         "(or a hub id)")
    launch = plan_store(cfg.model, list(cfg.adapters), cfg.vllm_argv(), host_cache_form=cfg.host_cache_form,
                        cache_dir=cfg.adapter_cache_dir, cache_bytes=cfg.adapter_cache_bytes,
                        host_cache_bytes=cfg.host_cache_bytes)
    kwargs = engine_kwargs(launch.argv)
    env = {k: v for k, v in launch.env.items() if k in REPLICA_ENV}
    env.update({k: os.environ[k] for k in INHERITED_ENV if os.environ.get(k)})
    cpu = on_cpu()
    if cpu:
        # Several replicas on one host: vLLM's default binds every engine's threads from core 0.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    deployment: dict = {"ray_actor_options": {"num_cpus": cfg.cpus_per_replica}}
    if cfg.min_replicas is not None:
        deployment["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas}
    else:
        deployment["num_replicas"] = cfg.num_replicas or 1
    return LLMConfig(
        model_loading_config={"model_id": cfg.served_id, "model_source": cfg.model},
        accelerator_config={"kind": "cpu"} if cpu else None,
        engine_kwargs=kwargs,
        lora_config={"max_num_adapters_per_replica": cfg.max_adapters_per_replica or kwargs.get("max_cpu_loras", 8)},
        deployment_config=deployment,
        runtime_env={"env_vars": env},
        server_cls="selora_serve.ray.server:SeloraLLMServer",
    ), launch.notes


def build(cfg: AppConfig):
    """The Serve Application for `cfg` (see the module docstring)."""
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import make_fastapi_ingress

    from . import pin
    from .ingress import RayGuard, SeloraIngress

    pin.require()
    config, notes = llm_config(cfg)
    for note in notes:
        print(f"selora-serve (ray): {note}")
    app = init()  # Ray's ingress app (its error handling, CORS, metrics, request ids)
    if cfg.tenants:
        from ..tenants import load_tenants

        app.add_middleware(RayGuard, tenants=load_tenants(cfg.tenants), base_ids=(cfg.served_id,))
    ingress = make_fastapi_ingress(SeloraIngress, app=app)
    return serve.deployment(ingress, **SeloraIngress.get_deployment_options([config])).bind(
        llm_deployments={cfg.served_id: build_llm_deployment(config)},
        model_cards={cfg.served_id: to_model_metadata(cfg.served_id, config)},
        adapter_roots=list(cfg.adapters),
    )
