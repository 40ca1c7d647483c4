"""One loopback Ray cluster per session serving the tiny model on two replicas (real Ray Serve LLM,
real vLLM, real moto), and the transformers + PEFT reference outputs.

The store has local SeLoRA adapters (haar, db4, fourier), a dense PEFT one, a corrupt one, and an
s3:// root (moto behind the fault proxy) holding two more. Tenants are on: `client()` uses the
admin key unless given another. Each replica keeps at most HELD adapters (Ray's multiplex LRU).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports Ray (it reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once): a loopback-only cluster.
from selora_serve.ray import loopback  # noqa: F401,I001

from ..conftest import ADAPTER_KINDS, make_checkpoint
from ..serve.conftest import reference_outputs

BASE = "tiny"
REPLICAS, SLOTS, HELD = 2, 2, 3
KEYS = {"admin": "admin-key-0123456789", "acme": "acme-key-0123456789", "beta": "beta-key-0123456789"}
ENGINE_ARGS = "--max-model-len 256 --enforce-eager --kv-cache-memory-bytes 256M --seed 0"


@dataclass
class RayApp:
    url: str
    store: Path
    bucket: str
    s3: object
    ckpts: dict  # adapter name -> the SeLoRA checkpoint it serves (the reference's input)

    def client(self, key: str | None = KEYS["admin"]):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def replica_states(self, calls: int = 24) -> dict[str, dict]:
        """{replica id: selora_adapters()} of every replica a handle reached in `calls` calls."""
        from ray import serve

        handle = serve.get_deployment_handle(f"SeloraLLMServer:{BASE}", app_name="selora")
        states = {}
        for _ in range(calls):
            state = handle.selora_adapters.remote().result(timeout_s=60)
            states[state["replica"]] = state
        return states


def _tenants_file(path: Path) -> Path:
    from selora_serve.tenants import hash_key

    path.write_text(
        f'[admin]\nkey_sha256 = "{hash_key(KEYS["admin"])}"\n\n'
        f'[[tenant]]\nname = "acme"\nkey_sha256 = "{hash_key(KEYS["acme"])}"\nadapters = ["haar", "remote-*"]\n\n'
        f'[[tenant]]\nname = "beta"\nkey_sha256 = "{hash_key(KEYS["beta"])}"\nadapters = ["fourier"]\n'
        "base_model = false\n"
    )
    return path


@pytest.fixture(scope="session")
def ray_app(tiny_model, checkpoints, s3, tmp_path_factory):
    pytest.importorskip("ray.serve.llm")
    pytest.importorskip("openai")
    import os

    from ray import serve

    from selora_serve.convert import to_peft
    from selora_serve.ray import build_app
    from selora_serve.ray.loopback import loopback_cluster
    from selora_serve.store.s3local import endpoint_env
    from selora_serve.store.s3local import _free_port as free_port

    work = tmp_path_factory.mktemp("ray")
    store = work / "store"
    for name in ("haar", "db4", "fourier"):
        shutil.copytree(checkpoints[name], store / name)
    shutil.copytree(checkpoints["db4"], store / "concurrent")  # first requested by the concurrency test
    shutil.copytree(checkpoints["fourier"], store / "affinity")  # first requested by the affinity test
    to_peft(checkpoints["haar"], store / "dense")
    shutil.copytree(checkpoints["db4"], store / "bad")
    coef = store / "bad" / "selora_coefficients.safetensors"
    coef.write_bytes(coef.read_bytes()[:-9])
    bucket = "ray-fleet"
    s3.create_bucket(bucket)
    for i, name in enumerate(("remote-haar", "remote-fourier")):
        kind = ADAPTER_KINDS[name.split("-")[1]]
        s3.upload_dir(bucket, f"prod/{name}", make_checkpoint(tiny_model, work / "ckpts" / name, seed=20 + i, **kind))
    s3.proxy.set_mode("pass")
    saved = {k: os.environ.get(k) for k in (*endpoint_env(s3.proxy.url), "SELORA_ADAPTER_CACHE_DIR")}
    os.environ.update(endpoint_env(s3.proxy.url))
    os.environ["SELORA_ADAPTER_CACHE_DIR"] = str(work / "adapter-cache")
    try:
        with loopback_cluster(num_cpus=8, http_port=free_port()) as url:
            serve.run(build_app({
                "model": str(tiny_model), "model_id": BASE, "adapters": f"{store},s3://{bucket}/prod",
                "tenants": str(_tenants_file(work / "tenants.toml")), "num_replicas": str(REPLICAS),
                "max_loras": str(SLOTS), "max_cpu_loras": str(HELD), "max_adapters_per_replica": str(HELD),
                "engine_args": ENGINE_ARGS,
            }), name="selora", route_prefix="/")
            ckpts = {n: store / n for n in ("haar", "db4", "fourier", "concurrent")}
            ckpts.update({"dense": checkpoints["haar"], "remote-haar": work / "ckpts" / "remote-haar",
                          "remote-fourier": work / "ckpts" / "remote-fourier"})
            yield RayApp(url, store, bucket, s3, ckpts)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def reference(tiny_model, tmp_path_factory):
    """reference(ckpt or None, prompts) -> transformers(+PEFT) greedy token ids, memoised."""
    return reference_outputs(tiny_model, tmp_path_factory.mktemp("ray-expected"))
