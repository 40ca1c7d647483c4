"""`selora-serve --demo`: a tiny local base model and three SeLoRA adapters, built once and cached.

Nothing is downloaded: the base is `tiny.build_tiny_model` (a 2-layer Llama with its own BPE
tokenizer and chat template, random weights, so it answers in fluent nonsense) and the adapters
are random-B checkpoints in the three bases (Haar and Daubechies-4 wavelets, Fourier), so each
visibly changes the output.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SeLoRAConfig

DEMO_ADAPTERS = {
    "demo-haar": dict(basis="wavelet", wavelet="haar"),
    "demo-db4": dict(basis="wavelet", wavelet="db4"),
    "demo-fourier": dict(basis="fourier", wavelet=None),
}
# Small and CPU-friendly: vLLM's CPU backend reserves this share of RAM for the KV cache.
DEMO_VLLM_OPTIONS = (
    ("--served-model-name", "tiny-llama"), ("--max-model-len", "256"), ("--enforce-eager", None), ("--gpu-memory-utilization", "0.1"),
)


def build_demo(root: str | Path) -> tuple[Path, Path]:
    """The demo base model directory and adapter store under `root` (built if missing)."""
    from ..convert import init_checkpoint
    from ..tiny import build_tiny_model

    root = Path(root)
    model = root / "tiny-llama"
    store = root / "adapters"
    if not model.is_dir():
        build_tiny_model(model, seed=0)
    store.mkdir(parents=True, exist_ok=True)
    for i, (name, kind) in enumerate(DEMO_ADAPTERS.items(), start=1):
        if not (store / name).is_dir():
            config = SeLoRAConfig(r=8, alpha=16, eta=0.6, seed=i, **kind)
            init_checkpoint(model, store / name, config, random_b=True, init_seed=100 + i)
    return model, store
