"""Facts about a base model from its Hugging Face config alone (no weights are read).

- `target_shapes(config, targets)`: {module path: (in_features, out_features)} of the nn.Linear
  modules whose last name component is in `targets`, found on a meta-device instance, so it
  works for any architecture transformers knows.
- `fingerprint(config)`: sha256 of the architecture fields that decide those shapes, so an
  adapter can be checked against a base model before any tensor is touched.
- `BaseFacts.of(config)`: both, computed once. A server checks every adapter it loads against
  one base model; reading the config each time (a deep copy, a walk over the meta model) would
  cost more than the check itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

# Fields that decide the shapes of a decoder's linear layers. Those absent from a config are
# skipped; the model type is always included.
FINGERPRINT_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)

# LLaMA-3-8B's published config.json, used for parameter counts without weights.
LLAMA3_8B = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)

# SmolLM2-135M-Instruct (`python -m selora_serve.models smollm2`): the real model of the tests.
SMOLLM2_135M = dict(
    model_type="llama",
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def load_config(model_dir: str | Path):
    """The transformers config of a local model directory, with a clear error if absent."""
    from transformers import AutoConfig

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def config_from_dict(data: dict[str, Any]):
    from transformers import AutoConfig

    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def _config_key(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


@lru_cache(maxsize=16)
def _meta_model(key: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(key)
    config = AutoConfig.for_model(data.pop("model_type"), **{k: v for k, v in data.items()})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def meta_model(config):
    """An instance of the architecture on the meta device (shapes only, no memory)."""
    return _meta_model(_config_key(config))


@dataclass(frozen=True)
class BaseFacts:
    """What adapters are checked against: the fingerprint and every Linear's (in, out)."""

    model_type: str
    fingerprint: str
    linear_shapes: tuple[tuple[str, tuple[int, int]], ...]  # (module path, (in, out)), model order

    @classmethod
    def of(cls, config) -> "BaseFacts":
        if isinstance(config, cls):
            return config
        return _facts(_config_key(config))

    def target_shapes(self, targets: tuple[str, ...] | list[str]) -> dict[str, tuple[int, int]]:
        """{module path: (in_features, out_features)} for every Linear named in `targets`."""
        shapes = {name: shape for name, shape in self.linear_shapes if name.rsplit(".", 1)[-1] in targets}
        found = {n.rsplit(".", 1)[-1] for n in shapes}
        missing = [t for t in targets if t not in found]
        if missing:
            linear_names = sorted({n.rsplit(".", 1)[-1] for n, _ in self.linear_shapes})
            raise ValueError(
                f"target module(s) {', '.join(missing)} not found in {self.model_type}; "
                f"its linear layers are {', '.join(linear_names)}"
            )
        return shapes


@lru_cache(maxsize=16)
def _facts(key: str) -> BaseFacts:
    data = json.loads(key)
    linear = tuple(
        (name, (mod.in_features, mod.out_features))
        for name, mod in _meta_model(key).named_modules()
        if isinstance(mod, torch.nn.Linear)
    )
    return BaseFacts(data["model_type"], _fingerprint(data), linear)


def target_shapes(config, targets: tuple[str, ...] | list[str]) -> dict[str, tuple[int, int]]:
    """{module path: (in_features, out_features)} for every Linear named in `targets`
    (`config`: a transformers config or its `BaseFacts`)."""
    return BaseFacts.of(config).target_shapes(targets)


def num_parameters(config) -> int:
    return sum(p.numel() for p in meta_model(config).parameters())


def fingerprint(config) -> str:
    if isinstance(config, BaseFacts):
        return config.fingerprint
    return _fingerprint(config.to_dict())


def _fingerprint(d: dict) -> str:
    facts = {k: d[k] for k in FINGERPRINT_FIELDS if d.get(k) is not None}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=4)
def facts_of_model(name: str) -> BaseFacts:
    """The `BaseFacts` of a served base model by its path or hub id (what an engine was given)."""
    from transformers import AutoConfig

    return BaseFacts.of(AutoConfig.from_pretrained(name))
