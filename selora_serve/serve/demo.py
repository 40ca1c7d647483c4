"""`selora-serve --demo`: a real base model and three adapters trained on it, ready in one command.

    build_demo(root, "smollm2") -> (model dir, adapter store)     (the default)
    build_demo(root, "tiny")    -> (model dir, adapter store)     (`--demo-model tiny`)

smollm2: SmolLM2-135M-Instruct, written once under `root` by `selora_serve.models` (it needs the
`real` extra), and the adapters shipped in this package (`demo_adapters/`, a few hundred KB each:
the format's point), trained on it with `selora-train` from `docs/examples/demo/` (README,
"The demo adapters"):

    demo-pirate   SeLoRA-W (haar)   a persona and a style: answers as Captain Byte, in pirate speak
    demo-terse    SeLoRA-F          a style: one sentence, no more
    demo-extract  SeLoRA-W (db4)    a task: a sentence about a person -> {"name", "age", "city"} JSON

tiny: the random 2-layer Llama of `selora_serve.tiny` with three random-B adapters (haar, db4,
Fourier); nothing to install, and it answers in fluent nonsense.

Nothing is downloaded either way; what is built is reused on the next start.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import atomic_directory
from ..config import SeLoRAConfig

DEMO_MODELS = ("smollm2", "tiny")
SHIPPED_ADAPTERS = Path(__file__).parent / "demo_adapters"
REAL_ADAPTERS = ("demo-pirate", "demo-terse", "demo-extract")
TINY_ADAPTERS = {
    "demo-haar": dict(basis="wavelet", wavelet="haar"),
    "demo-db4": dict(basis="wavelet", wavelet="db4"),
    "demo-fourier": dict(basis="fourier", wavelet=None),
}
SERVED_NAME = {"smollm2": "smollm2", "tiny": "tiny-llama"}
# CPU-friendly: an explicit KV cache size (a share of memory fails on hosts with a small NUMA node).
# The demo has no API key: it listens on this host only unless --host says otherwise (vLLM's own
# default is every interface).
DEMO_VLLM_OPTIONS = (("--max-model-len", "2048"), ("--enforce-eager", None), ("--kv-cache-memory-bytes", "1G"),
                     ("--host", "127.0.0.1"))


def demo_options(model: str) -> tuple[tuple[str, str | None], ...]:
    return (("--served-model-name", SERVED_NAME[model]),) + DEMO_VLLM_OPTIONS


def _copy_shipped(name: str, store: Path) -> None:
    source = SHIPPED_ADAPTERS / name
    target = store / name
    if target.is_dir() and all((target / f.name).is_file() and (target / f.name).read_bytes() == f.read_bytes()
                               for f in source.iterdir() if f.is_file()):
        return
    with atomic_directory(target, overwrite=True) as tmp:
        for f in source.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def build_demo(root: str | Path, model: str = "smollm2") -> tuple[Path, Path]:
    """The demo base model directory and adapter store under `root` (built if missing)."""
    if model not in DEMO_MODELS:
        raise ValueError(f"--demo-model {model!r}: expected one of {', '.join(DEMO_MODELS)}")
    root = Path(root)
    store = root / f"adapters-{model}"
    if model == "smollm2":
        from ..models import MissingExtraError, export

        try:
            model_dir = export("smollm2", root / "smollm2", log=lambda m: print(f"selora-serve: {m}", flush=True))
        except MissingExtraError as exc:
            raise ValueError(f"--demo serves SmolLM2-135M-Instruct: {exc}; or try `selora-serve --demo --demo-model "
                             "tiny` (a tiny random model, nothing to install)") from None
        store.mkdir(parents=True, exist_ok=True)
        for name in REAL_ADAPTERS:
            _copy_shipped(name, store)
        return model_dir, store

    from ..convert import init_checkpoint
    from ..tiny import build_tiny_model

    model_dir = root / "tiny-llama"
    if not model_dir.is_dir():
        build_tiny_model(model_dir, seed=0)
    store.mkdir(parents=True, exist_ok=True)
    for i, (name, kind) in enumerate(TINY_ADAPTERS.items(), start=1):
        if not (store / name).is_dir():
            config = SeLoRAConfig(r=8, alpha=16, eta=0.6, seed=i, **kind)
            init_checkpoint(model_dir, store / name, config, random_b=True, init_seed=100 + i)
    return model_dir, store
