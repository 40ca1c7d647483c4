"""The real pretrained model, SmolLM2-135M-Instruct, for the tests whose claim is about real models.

One export per session (`python -m selora_serve.models smollm2`, about 20 s), its adapters, and
one `selora-serve` over it (float32, CPU). The store holds a random-B SeLoRA adapter per basis
(haar, db4, fourier) on q, k, v, up, down, and the three demo adapters this package ships, which
were trained on this model. Skipped where the `real` extra is not installed (`make setup`
installs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..serve.conftest import start_server, stop_server

REAL_NAME = "smollm2"
REAL_KINDS = {
    "real-haar": dict(basis="wavelet", wavelet="haar"),
    "real-db4": dict(basis="wavelet", wavelet="db4"),
    "real-fourier": dict(basis="fourier", wavelet=None),
}


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> Path:
    from selora_serve.models import MODELS, MissingExtraError, export

    try:
        MODELS["smollm2"].path()
        import gguf  # noqa: F401
    except (MissingExtraError, ImportError) as exc:
        pytest.skip(f"the real-model extra is not installed: {exc}")
    return export("smollm2", tmp_path_factory.mktemp("real") / "smollm2", log=lambda m: None)


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
                        "--max-loras", "3", "--max-cpu-loras", "6"], log)
    srv.store = store
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def real_expected(real_model, tmp_path_factory):
    """real_expected(ckpt or None, prompts, max_new_tokens) -> transformers(+PEFT) greedy ids, memoised."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selora_serve.convert import to_peft
    from selora_serve.reference import greedy_tokens

    tok = AutoTokenizer.from_pretrained(str(real_model))
    root = tmp_path_factory.mktemp("real-expected")
    cache: dict = {}

    def run(ckpt: Path | None, prompts: tuple[str, ...], max_new_tokens: int) -> list[list[int]]:
        key = (str(ckpt), prompts, max_new_tokens)
        if key not in cache:
            model = AutoModelForCausalLM.from_pretrained(str(real_model), dtype=torch.float32)
            if ckpt is not None:
                model = PeftModel.from_pretrained(model, str(to_peft(ckpt, root / f"peft-{len(cache)}")))
            cache[key] = greedy_tokens(model.eval(), tok, list(prompts), max_new_tokens)
        return cache[key]

    run.tokenizer = tok
    return run
