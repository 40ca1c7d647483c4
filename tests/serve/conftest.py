"""One real `selora-serve` process per test session (CPU, float32), and the expected outputs.

The server holds SeLoRA adapters in its host cache in spectral form (`--host-cache-form
spectral`): every test that cycles adapters through the slots then checks the decode on
activation against the reference. The dense form, vLLM's own, is what tests/vllm's engine and
the serving benchmark's smoke run use.

The store holds three good SeLoRA adapters (haar, db4, fourier) and the broken ones the error
tests need. `expected(name, prompts)` gives transformers + PEFT greedy tokens for a store adapter
converted by `selora-convert to-peft` (the independent reference).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from selora_serve.serve import launch

from ..conftest import make_checkpoint
from ..vllm.conftest import MAX_NEW_TOKENS, hf_greedy

STARTUP_TIMEOUT_S = 300
SLOTS, HOST_CACHE = 3, 4
PINNED = "fourier"  # pinned at start-up (--pin); one slot of SLOTS stays its own
BASE_NAME = "tiny"


@dataclass
class Server(launch.ServerProcess):
    store: Path = field(default_factory=Path)


def _free_port() -> int:
    return launch.free_port()


def _wait_healthy(server: Server) -> None:
    launch.wait_healthy(server, STARTUP_TIMEOUT_S, "selora-serve")


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None,
                 timeout: float = STARTUP_TIMEOUT_S) -> Server:
    proc = launch.start(launch.selora_serve_command([*args, *launch.CPU_OPTIONS]), log, env=env,
                        timeout=timeout, name="selora-serve")
    return Server(proc.url, proc.process, proc.log)


def stop_server(server: Server) -> None:
    launch.stop(server)


@pytest.fixture(scope="session")
def spare_checkpoints(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Good adapters kept outside the store: copied in during tests (hot add, LRU rotation)."""
    root = tmp_path_factory.mktemp("spare")
    return {
        f"late-{i}": make_checkpoint(tiny_model, root / f"late-{i}", seed=20 + i, basis="wavelet", wavelet="haar")
        for i in range(3)
    }


@pytest.fixture(scope="session")
def store(tiny_model, checkpoints, tmp_path_factory) -> Path:
    from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE
    from selora_serve.tiny import TinySpec, build_tiny_model

    root = tmp_path_factory.mktemp("store")
    for name, ckpt in checkpoints.items():
        shutil.copytree(ckpt, root / name)
    # Broken adapters, each with one defect.
    shutil.copytree(checkpoints["haar"], root / "corrupt")
    (root / "corrupt" / CONFIG_FILE).write_text("{ not json")
    shutil.copytree(checkpoints["haar"], root / "truncated")
    data = (root / "truncated" / COEF_FILE).read_bytes()
    (root / "truncated" / COEF_FILE).write_bytes(data[: len(data) // 2])
    other = build_tiny_model(tmp_path_factory.mktemp("other") / "m", spec=TinySpec(num_hidden_layers=1))
    make_checkpoint(other, root / "mismatched", seed=5, basis="wavelet", wavelet="haar")
    # A link out of the store to an otherwise valid adapter.
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(checkpoints["db4"], outside / "db4")
    (root / "escape").symlink_to(outside / "db4", target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def server(tiny_model, store, tmp_path_factory):
    pytest.importorskip("vllm")
    pytest.importorskip("openai")
    log = tmp_path_factory.mktemp("server") / "selora-serve.log"
    srv = start_server(
        ["--model", str(tiny_model), "--adapters", str(store), "--served-model-name", BASE_NAME,
         "--max-loras", str(SLOTS), "--max-cpu-loras", str(HOST_CACHE), "--pin", PINNED,
         "--host-cache-form", "spectral"],
        log,
    )
    srv.store = store
    yield srv
    stop_server(srv)


def reference_outputs(model_dir: Path, root: Path, default_tokens: int = MAX_NEW_TOKENS):
    """run(ckpt or None, prompts, max_new_tokens=default) -> transformers(+PEFT) greedy token ids
    for `model_dir` with the adapter converted by `selora-convert to-peft` (the independent
    reference), memoised; `run.tokenizer` is the model's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selora_serve.convert import to_peft

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cache: dict = {}

    def run(ckpt: Path | None, prompts: tuple[str, ...], max_new_tokens: int = default_tokens) -> list[list[int]]:
        key = (str(ckpt), prompts, max_new_tokens)
        if key not in cache:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
            if ckpt is not None:
                peft_dir = to_peft(ckpt, root / f"peft-{len(cache)}")
                model = PeftModel.from_pretrained(model, str(peft_dir))
            cache[key] = hf_greedy(model.eval(), tok, list(prompts), max_new_tokens)
        return cache[key]

    run.tokenizer = tok
    return run


@pytest.fixture(scope="session")
def expected(tiny_model, tmp_path_factory):
    """expected(ckpt or None, prompts) -> transformers(+PEFT) greedy token ids, memoised."""
    return reference_outputs(tiny_model, tmp_path_factory.mktemp("expected"))


__all__ = ["BASE_NAME", "HOST_CACHE", "MAX_NEW_TOKENS", "PINNED", "SLOTS", "Server", "reference_outputs",
           "start_server", "stop_server"]
