"""Shared pieces of the training tests: a memorisable Q->A task and adapter specs per variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selora_serve.config import SeLoRAConfig
from selora_serve.training.layers import AdapterSpec

# Six question -> answer pairs in the tiny tokenizer's vocabulary: a random base model answers
# none of them; an adapter can memorise all of them in a few dozen steps.
QA = [
    {"instruction": "what colour is the river", "input": "", "output": "green fire"},
    {"instruction": "what colour is the cat", "input": "", "output": "blue mountain"},
    {"instruction": "name the bird", "output": "red house"},
    {"instruction": "where is the dog", "input": "", "output": "water tree city"},
    {"instruction": "when did the man come", "input": "the old year", "output": "after the great year"},
    {"instruction": "where is the city", "output": "under the mountain"},
]

# variant name -> (CLI variant, SeLoRAConfig fields)
VARIANTS = {
    "haar": ("selora", dict(basis="wavelet", wavelet="haar")),
    "db4": ("selora", dict(basis="wavelet", wavelet="db4")),
    "fourier": ("selora", dict(basis="fourier", wavelet=None)),
    "sedora": ("sedora", dict(basis="wavelet", wavelet="haar")),
    "lora": ("lora", dict(basis="wavelet", wavelet="haar")),
}


def spec_for(kind: str, *, r: int = 8, alpha: float = 16.0, seed: int = 0, dropout: float = 0.0, targets=None) -> AdapterSpec:
    variant, fields = VARIANTS[kind]
    extra = {} if targets is None else {"target_modules": tuple(targets)}
    config = SeLoRAConfig(r=r, alpha=alpha, eta=0.6, seed=seed, **fields, **extra)
    return AdapterSpec.for_variant(variant, config, dropout=dropout)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "qa.jsonl", QA)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from selora_serve.training.job import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="session")
def qa_examples(qa_file, tokenizer):
    from selora_serve.training.data import load_examples

    return load_examples(qa_file, tokenizer, max_len=128)


@pytest.fixture
def base_model(tiny_model):
    from selora_serve.training.job import load_model

    return load_model(tiny_model)


@pytest.fixture(scope="session")
def batch(tokenizer):
    """Prompts of the task (and one it never saw), right-padded."""
    from selora_serve.prompts import alpaca_prompt

    texts = [alpaca_prompt(r["instruction"], r.get("input", "")) for r in QA[:3]] + ["the cat is red"]
    return tokenizer(texts, return_tensors="pt", padding=True)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits
