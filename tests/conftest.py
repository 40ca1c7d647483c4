"""Shared fixtures: one tiny local model per session, and adapters made for it; the real model; a
loopback S3 server (moto) with a fresh bucket per test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selora_serve.config import SeLoRAConfig


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama-architecture model + BPE tokenizer, built locally (float32)."""
    from selora_serve.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, exported once per session (about 20 s);
    tests that use it are skipped where the `real` extra is not installed."""
    from selora_serve.models import MODELS, MissingExtraError, export

    try:
        MODELS["smollm2"].path()
        import gguf  # noqa: F401
    except (MissingExtraError, ImportError) as exc:
        pytest.skip(f"the real-model extra is not installed: {exc}")
    return export("smollm2", tmp_path_factory.mktemp("real") / "smollm2", log=lambda m: None)


ADAPTER_KINDS = {
    "haar": dict(basis="wavelet", wavelet="haar"),
    "db4": dict(basis="wavelet", wavelet="db4"),
    "fourier": dict(basis="fourier", wavelet=None),
}


def make_checkpoint(base: Path, out: Path, *, seed: int = 0, variant: str = "selora", **kind) -> Path:
    from selora_serve.convert import init_checkpoint

    config = SeLoRAConfig(r=8, alpha=16, eta=0.6, seed=seed, variant=variant, **kind)
    return init_checkpoint(base, out, config, random_b=True, init_seed=seed + 100)


@pytest.fixture(scope="session")
def checkpoints(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """One random-B SeLoRA checkpoint per basis kind, for the tiny model."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        name: make_checkpoint(tiny_model, root / name, seed=i + 1, **kind)
        for i, (name, kind) in enumerate(ADAPTER_KINDS.items())
    }


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return ["the cat is", "river and mountain", "one two three four", "Below is an instruction"]


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


# --- a real S3-protocol server (moto) on loopback, behind a fault-injecting proxy -------------

@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server in a child process, and a FaultProxy in front of it (`s3.proxy`)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("obstore")
    from selora_serve.store.s3local import FaultProxy, S3Server

    with S3Server(log=tmp_path_factory.mktemp("s3") / "moto.log") as server, FaultProxy(server.port) as proxy:
        server.proxy = proxy
        yield server


_buckets = iter(range(10**6))


@pytest.fixture
def bucket(s3, monkeypatch):
    """A fresh bucket; this process's AWS environment points at it through the proxy."""
    from selora_serve.store.s3local import endpoint_env

    name = f"test-{next(_buckets)}"
    s3.create_bucket(name)
    for key, value in endpoint_env(s3.proxy.url).items():
        monkeypatch.setenv(key, value)
    s3.proxy.set_mode("pass")
    yield name
    s3.proxy.set_mode("pass")
