"""The real pretrained model, SmolLM2-135M-Instruct, for the tests whose claim is about real models.

The model itself is the session fixture `real_model` (tests/conftest.py); here are its adapters
and one `selora-serve` over it (float32, CPU). The store holds a random-B SeLoRA adapter per basis
(haar, db4, fourier) on q, k, v, up, down, and the three demo adapters this package ships, which
were trained on this model. Skipped where the `real` extra is not installed (`make setup`
installs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..serve.conftest import reference_outputs, start_server, stop_server

REAL_NAME = "smollm2"
REAL_KINDS = {
    "real-haar": dict(basis="wavelet", wavelet="haar"),
    "real-db4": dict(basis="wavelet", wavelet="db4"),
    "real-fourier": dict(basis="fourier", wavelet=None),
}


@pytest.fixture(scope="session")
def real_checkpoints(real_model, tmp_path_factory) -> dict[str, Path]:
    """Random-B SeLoRA adapters (r 8) per basis for the real model, and the shipped demo adapters."""
    from selora_serve.config import SeLoRAConfig
    from selora_serve.convert import init_checkpoint
    from selora_serve.serve.demo import REAL_ADAPTERS, SHIPPED_ADAPTERS

    root = tmp_path_factory.mktemp("real-ckpts")
    out = {}
    for i, (name, kind) in enumerate(REAL_KINDS.items(), start=1):
        config = SeLoRAConfig(r=8, alpha=16, eta=0.6, seed=i, **kind)
        out[name] = init_checkpoint(real_model, root / name, config, random_b=True, init_seed=200 + i)
    for name in REAL_ADAPTERS:
        out[name] = Path(shutil.copytree(SHIPPED_ADAPTERS / name, root / name))
    return out


@pytest.fixture(scope="session")
def real_server(real_model, real_checkpoints, tmp_path_factory):
    pytest.importorskip("vllm")
    pytest.importorskip("openai")
    store = tmp_path_factory.mktemp("real-store")
    for name, ckpt in real_checkpoints.items():
        shutil.copytree(ckpt, store / name)
    log = tmp_path_factory.mktemp("real-server") / "selora-serve.log"
    srv = start_server(["--model", str(real_model), "--adapters", str(store), "--served-model-name", REAL_NAME,
                        "--max-loras", "3", "--max-cpu-loras", "6"], log, timeout=600)
    srv.store = store
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def real_expected(real_model, tmp_path_factory):
    """real_expected(ckpt or None, prompts, max_new_tokens) -> transformers(+PEFT) greedy ids, memoised."""
    return reference_outputs(real_model, tmp_path_factory.mktemp("real-expected"))
