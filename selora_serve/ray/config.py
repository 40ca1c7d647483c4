"""The Ray Serve app's options: `serve run selora_serve.ray:build_app KEY=VALUE ...` or a config file's `args:`.

    cfg = AppConfig.from_args({"model": "/models/smollm2", "adapters": "/srv/adapters,s3://bucket/prod"})

Ray hands the builder every `key=value` as a string (a config file may give typed values); each is
checked here, before Ray or vLLM is asked anything, and an unknown or malformed key is a ValueError
naming the key, the value and what was expected. No Ray or vLLM import.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

HELP = {
    "model": "base model: a local directory (config.json) or a hub id [required]",
    "adapters": "adapter store roots, comma-separated: directories and s3://BUCKET/PREFIX [required]",
    "model_id": "the base model's id in the API; adapters are MODEL_ID:ADAPTER (default: the model directory's name)",
    "tenants": "tenants.toml: API keys and the adapters each may use (as selora-serve --tenants)",
    "num_replicas": "replicas of the model (default 1); or min_replicas/max_replicas for Ray's autoscaling",
    "min_replicas": "autoscaling: fewest replicas (with max_replicas)",
    "max_replicas": "autoscaling: most replicas (with min_replicas)",
    "max_loras": "vLLM LoRA slots per replica (default: planned from the store, as selora-serve)",
    "max_cpu_loras": "adapters in each replica's vLLM host cache (default: planned from the store)",
    "max_lora_rank": "rank limit (default: the store's largest rank, rounded up to one vLLM supports)",
    "max_adapters_per_replica": "adapters Ray keeps loaded per replica before evicting (default: max_cpu_loras)",
    "cpus_per_replica": "logical CPUs Ray reserves for each replica (default 1)",
    "host_cache_form": "dense | spectral: the form SeLoRA adapters take in the host cache (as selora-serve)",
    "host_cache_bytes": "bound each replica's host cache in bytes (e.g. 2G), as selora-serve --host-cache-bytes",
    "adapter_cache_dir": "where adapters from s3:// roots are cached on each node",
    "adapter_cache_bytes": "that cache's size bound (e.g. 16G)",
    "engine_args": "more vLLM engine options, as on vLLM's command line (\"--max-model-len 2048 --enforce-eager\")",
}

_INT_KEYS = ("num_replicas", "min_replicas", "max_replicas", "max_loras", "max_cpu_loras", "max_lora_rank",
             "max_adapters_per_replica")


@dataclass(frozen=True)
class AppConfig:
    model: str
    adapters: tuple[str, ...]
    model_id: str = ""
    tenants: str | None = None
    num_replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    max_lora_rank: int | None = None
    max_adapters_per_replica: int | None = None
    cpus_per_replica: float = 1.0
    host_cache_form: str | None = None
    host_cache_bytes: str | None = None
    adapter_cache_dir: str | None = None
    adapter_cache_bytes: str | None = None
    engine_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.adapters:
            raise ValueError("adapters=: expected at least one adapter store root (a directory or s3://BUCKET/PREFIX)")
        for key in _INT_KEYS:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}={value}: expected a positive integer")
        if self.cpus_per_replica <= 0:
            raise ValueError(f"cpus_per_replica={self.cpus_per_replica}: expected a positive number")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("min_replicas and max_replicas go together (Ray's autoscaling range)")
        if self.min_replicas is not None:
            if self.num_replicas is not None:
                raise ValueError("num_replicas= is fixed; min_replicas/max_replicas autoscale: give one or the other")
            if self.min_replicas > self.max_replicas:
                raise ValueError(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        if self.host_cache_form not in (None, "dense", "spectral"):
            raise ValueError(f"host_cache_form={self.host_cache_form!r}: expected dense or spectral")
        if ":" in self.model_id:
            raise ValueError(f"model_id={self.model_id!r}: ':' separates the base model from the adapter in "
                             "Ray's model ids; choose an id without it")

    @property
    def served_id(self) -> str:
        return self.model_id or Path(self.model.rstrip("/")).name

    def vllm_argv(self) -> list[str]:
        """The options the user set, as vLLM command-line options (the planner adds its defaults)."""
        argv = list(self.engine_args)
        for key in ("max_loras", "max_cpu_loras", "max_lora_rank"):
            if getattr(self, key) is not None:
                argv += [f"--{key.replace('_', '-')}", str(getattr(self, key))]
        return argv

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "AppConfig":
        """From Ray's builder arguments (strings from `serve run`, or typed values from a config file)."""
        unknown = sorted(set(args) - set(HELP))
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(unknown)}; selora_serve.ray:build_app takes: "
                             + "; ".join(f"{k}= {v}" for k, v in HELP.items()))
        for key in ("model", "adapters"):
            if not args.get(key):
                raise ValueError(f"{key}= is required: {HELP[key]}")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in args or args[f.name] is None:
                continue
            value = args[f.name]
            try:
                if f.name == "adapters":
                    value = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value)
                                  if v.strip())
                elif f.name == "engine_args":
                    value = tuple(shlex.split(value) if isinstance(value, str) else map(str, value))
                elif f.name in _INT_KEYS:
                    value = int(value)
                elif f.name == "cpus_per_replica":
                    value = float(value)
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise ValueError(f"{f.name}={args[f.name]!r}: expected {HELP[f.name]}") from None
            kw[f.name] = value
        return cls(**kw)


def adapter_name(model_id: str) -> str:
    """The store name in Ray's adapter id `BASE:NAME` (NAME may itself hold ':' or '/')."""
    return model_id.split(":", 1)[1] if ":" in model_id else model_id


def usage() -> str:
    return "serve run selora_serve.ray:build_app " + " ".join(f"{k}=..." for k in ("model", "adapters")) + \
        "\n" + "\n".join(f"  {k:<26}{v}" for k, v in HELP.items())
