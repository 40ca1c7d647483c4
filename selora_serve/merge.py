"""Merging an adapter into its base model's weights.

Pure part: `merged_weight(w0, A, B, scaling, magnitude)` returns W0 + scaling * B @ A, or for
SeDoRA m * (W0 + dW) / ||W0 + dW|| with the norm over each output row (PEFT's DoRA), computed
in float32 and cast back to W0's dtype.

I/O part: `merge_model_dir` streams the base model's safetensors shards one at a time, replaces
the adapted `{module}.weight` tensors, copies every other file (config, tokenizer, index), and
writes the result atomically: transformers and vLLM load it as an ordinary model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import __version__
from .adapter import SpectralAdapter, materialise_adapter
from .atomic import atomic_directory

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PROVENANCE_FILE = "selora_merge.json"


def merged_weight(
    w0: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: float,
    magnitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """W0 (out, in) with the update of A (r, in) and B (out, r) merged in."""
    w = w0.float() + scaling * (b.float() @ a.float())
    if magnitude is not None:
        w = w * (magnitude.float() / torch.linalg.norm(w, dim=1)).unsqueeze(1)
    return w.to(w0.dtype)


def weight_shards(base_dir: Path) -> list[str]:
    """The safetensors files holding a model directory's weights."""
    if (base_dir / INDEX_FILE).is_file():
        index = json.loads((base_dir / INDEX_FILE).read_text())
        return sorted(set(index["weight_map"].values()))
    if (base_dir / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    raise FileNotFoundError(
        f"{base_dir}: no {SINGLE_FILE} or {INDEX_FILE}; merging needs safetensors weights"
    )


def merge_model_dir(
    adapter: SpectralAdapter,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> Path:
    """Write base model + merged adapter to `out_dir` (a complete HF model directory)."""
    from safetensors.torch import load_file, save_file

    base_dir = Path(base_dir)
    shards = weight_shards(base_dir)
    dense = materialise_adapter(adapter)
    pending = set(dense)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for item in base_dir.iterdir():
            if item.name in shards or item.name.startswith("."):
                continue
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
            elif item.is_dir():
                shutil.copytree(item, tmp / item.name)
        for shard in progress(shards):
            tensors = load_file(str(base_dir / shard))
            for name in sorted(pending):
                key = f"{name}.weight"
                if key not in tensors:
                    continue
                a, b = dense[name]
                w0 = tensors[key]
                if tuple(w0.shape) != (b.shape[0], a.shape[1]):
                    raise ValueError(
                        f"{base_dir / shard}: {key}: shape {tuple(w0.shape)} does not fit the "
                        f"adapter's (out, in) = {(b.shape[0], a.shape[1])}"
                    )
                tensors[key] = merged_weight(w0, a, b, adapter.config.scaling, adapter.modules[name].magnitude)
                pending.discard(name)
            save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
        if pending:
            raise ValueError(
                f"{base_dir}: weights of {len(pending)} adapted module(s) not found, e.g. {sorted(pending)[0]}.weight"
            )
        (tmp / PROVENANCE_FILE).write_text(
            json.dumps(
                {
                    "merged_by": f"selora-serve {__version__}",
                    "base_model": str(base_dir),
                    "adapter_config": adapter.config.to_dict(),
                    "adapter_base_fingerprint": adapter.base.fingerprint,
                },
                indent=2,
            )
            + "\n"
        )
    return Path(out_dir)
