"""The Ray app's builder arguments, its engine options (the planner's, parsed by vLLM), and its Ray pins."""

from __future__ import annotations

import shutil

import pytest

from selora_serve.ray.config import AppConfig, usage


def test_args_from_serve_run_strings(tmp_path):
    cfg = AppConfig.from_args({"model": "/models/smollm2/", "adapters": "/a, s3://b/p", "num_replicas": "2",
                               "engine_args": "--max-model-len 512 --enforce-eager", "max_loras": "4",
                               "cpus_per_replica": "1.5"})
    assert cfg.adapters == ("/a", "s3://b/p") and cfg.num_replicas == 2 and cfg.cpus_per_replica == 1.5
    assert cfg.served_id == "smollm2"
    assert cfg.vllm_argv() == ["--max-model-len", "512", "--enforce-eager", "--max-loras", "4"]
    typed = AppConfig.from_args({"model": "m", "adapters": ["/a"], "num_replicas": 3, "model_id": "base"})
    assert typed.num_replicas == 3 and typed.served_id == "base"


@pytest.mark.parametrize("args, message", [
    ({"adapters": "/a"}, "model= is required"),
    ({"model": "m"}, "adapters= is required"),
    ({"model": "m", "adapters": "/a", "replicas": "2"}, r"unknown argument\(s\) replicas; .*num_replicas="),
    ({"model": "m", "adapters": "/a", "num_replicas": "two"}, r"num_replicas='two': expected replicas"),
    ({"model": "m", "adapters": "/a", "num_replicas": "0"}, "num_replicas=0: expected a positive integer"),
    ({"model": "m", "adapters": "/a", "min_replicas": "1"}, "min_replicas and max_replicas go together"),
    ({"model": "m", "adapters": "/a", "min_replicas": "3", "max_replicas": "2"}, "min_replicas=3 > max_replicas=2"),
    ({"model": "m", "adapters": "/a", "num_replicas": "1", "min_replicas": "1", "max_replicas": "2"},
     "give one or the other"),
    ({"model": "m", "adapters": "/a", "host_cache_form": "sparse"}, "expected dense or spectral"),
    ({"model": "m", "adapters": "/a", "model_id": "a:b"}, "choose an id without it"),
    ({"model": "m", "adapters": " , "}, "expected at least one adapter store root"),
])
def test_bad_args_name_the_key(args, message):
    with pytest.raises(ValueError, match=message):
        AppConfig.from_args(args)


def test_usage_lists_every_key():
    assert "model=..." in usage() and "max_adapters_per_replica" in usage()


def test_engine_options_come_from_the_planner(tiny_model, checkpoints, tmp_path):
    pytest.importorskip("ray.serve.llm")
    from selora_serve.ray.app import INHERITED_ENV, REPLICA_ENV, llm_config

    store = tmp_path / "store"
    shutil.copytree(checkpoints["haar"], store / "haar")
    config, notes = llm_config(AppConfig.from_args({"model": str(tiny_model), "adapters": str(store),
                                                    "engine_args": "--max-model-len 256"}))
    kwargs = config.engine_kwargs
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 8 and kwargs["max_model_len"] == 256
    assert kwargs["dtype"] == "float32" and kwargs["kv_cache_memory_bytes"] == 2 << 30, "CPU defaults, parsed"
    assert "--dtype float32" in notes
    env = config.runtime_env["env_vars"]
    assert set(env) <= {*REPLICA_ENV, *INHERITED_ENV}, "the store's settings and what the builder's host gives"
    assert env["SELORA_ADAPTER_DIRS"] == str(store.resolve()) and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert config.lora_config.max_num_adapters_per_replica == kwargs["max_cpu_loras"]
    assert config.lora_config.dynamic_lora_loading_path is None, "the store, not Ray's downloader"


def test_a_bad_model_is_refused_before_ray_starts(tmp_path):
    pytest.importorskip("ray.serve.llm")
    from selora_serve.ray.app import llm_config

    (tmp_path / "store").mkdir()
    with pytest.raises(ValueError, match=r"model=.*/nope: no config.json there"):
        llm_config(AppConfig.from_args({"model": str(tmp_path / "nope"), "adapters": str(tmp_path / "store")}))


def test_ray_internals_are_as_pinned():
    pytest.importorskip("ray.serve.llm")
    from selora_serve.pinning import check_hooks
    from selora_serve.ray import pin

    assert pin.version_matches(), f"selora_serve/ray is pinned to Ray {pin.SUPPORTED_RAY}"
    problems = check_hooks(pin.HOOKS)
    assert not problems, "Ray internals used by selora_serve/ray changed:\n" + "\n".join(problems)


def test_a_changed_ray_internal_is_reported_by_name(monkeypatch):
    pytest.importorskip("ray.serve.llm")
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine

    from selora_serve.ray import pin

    async def resolve_lora(self, disk_lora_model, load_inplace=False):
        return None

    monkeypatch.setattr(VLLMEngine, "resolve_lora", resolve_lora)
    with pytest.raises(RuntimeError, match=r"VLLMEngine.resolve_lora: parameters are .*load_inplace"):
        pin.require()


def test_loopback_cluster_refuses_when_ray_was_imported_first():
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import: too late is an error, not a
    cluster on the host's address."""
    import os
    import subprocess
    import sys

    pytest.importorskip("ray")
    code = ("import os; os.environ.pop('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', None); import ray\n"
            "from selora_serve.ray.loopback import loopback_cluster\n"
            "try:\n    loopback_cluster().__enter__()\nexcept RuntimeError as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env).stdout
    assert "Ray was imported before selora_serve.ray.loopback set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in out
