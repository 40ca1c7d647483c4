"""The tasks of benchmarks/quality_real.py: generated locally, disjoint splits, exact answers.

    addition    "a+b=" -> "c": three-digit addends; arithmetic the base model cannot do (0 %)
    extraction  a sentence about a person -> {"name": ..., "age": ..., "city": ...} as one line of
                JSON (the demo's extract adapter, docs/examples/demo/make_data.py), with the
                validation and test sentences about names and cities never seen in training, so
                the adapter must learn to copy spans, not to recall them

Why generated: the public sets an adapter benchmark would use (GSM8K, the commonsense suites,
alpaca) live on the Hugging Face hub, which this machine cannot reach, and no package in the
registries ships one (checked: `datasets` downloads from the hub; `nltk`'s corpora and
`torchtext`'s sets download at run time; `pycountry` ships ISO 3166 tables, but mapping a
held-out country to its code is recall, not a skill an adapter can learn from other countries).

Each task's `split(sizes, data_seed)` returns {"train", "validation", "test"}: lists of
(prompt, answer); the answer is followed by end of turn when encoded (`encode`).
"""

from __future__ import annotations

import importlib.util
import json
import random
from functools import lru_cache
from pathlib import Path

import torch

from selora_serve.training.data import IGNORE_INDEX, Example, collate

TASKS = ("addition", "extraction")
DEMO_DATA = Path(__file__).resolve().parents[1] / "docs" / "examples" / "demo" / "make_data.py"


def addition_split(train: int, validation: int, test: int, digits: int = 3, data_seed: int = 1234
                   ) -> dict[str, list[tuple[str, str]]]:
    """Disjoint lists of ("a+b=", "c"), a and b of `digits` digits (100..999 for 3)."""
    rng = random.Random(data_seed)
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    seen: set[tuple[int, int]] = set()
    pairs = []
    need = train + validation + test
    while len(pairs) < need:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) not in seen:
            seen.add((a, b))
            pairs.append((f"{a}+{b}=", str(a + b)))
    return {"train": pairs[:train], "validation": pairs[train : train + validation], "test": pairs[train + validation :]}


@lru_cache(maxsize=1)
def _demo():
    spec = importlib.util.spec_from_file_location("selora_demo_make_data", DEMO_DATA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def extraction_split(train: int, validation: int, test: int, data_seed: int = 1234) -> dict[str, list[tuple[str, str]]]:
    """Sentences -> one-line JSON; names and cities are split 3:1:1 between train, validation and
    test (by position in the demo's lists), so no held-out sentence names a training name or city."""
    demo = _demo()
    rng = random.Random(data_seed)
    out = {}
    for part, count, keep in (("train", train, (2, 3, 4)), ("validation", validation, (1,)), ("test", test, (0,))):
        names = [n for i, n in enumerate(demo.NAMES) if i % 5 in keep]
        cities = [c for i, c in enumerate(demo.CITIES) if i % 5 in keep]
        rows = []
        for _ in range(count):
            name, city, age = rng.choice(names), rng.choice(cities), rng.randint(18, 90)
            sentence = rng.choice(demo.SENTENCES).format(name=name, age=age, city=city)
            rows.append((f"{sentence}\nJSON:", " " + json.dumps({"name": name, "age": age, "city": city})))
        out[part] = rows
    return out


def split(task: str, train: int, validation: int, test: int, digits: int = 3) -> dict[str, list[tuple[str, str]]]:
    if task == "addition":
        return addition_split(train, validation, test, digits)
    if task == "extraction":
        return extraction_split(train, validation, test)
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def encode(pairs: list[tuple[str, str]], tokenizer, split_name: str) -> list[Example]:
    """Prompt tokens (no loss) + answer tokens + end of turn (the loss)."""
    eos = tokenizer.eos_token_id
    out = []
    for i, (question, answer) in enumerate(pairs):
        prompt = tokenizer(question, add_special_tokens=False)["input_ids"]
        response = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
        out.append(Example(tuple(prompt + response), (IGNORE_INDEX,) * len(prompt) + tuple(response), f"{split_name}:{i}"))
    return out


@torch.no_grad()
def evaluate(model, examples: list[Example], pad_id: int, batch: int = 64) -> tuple[float, float]:
    """(mean loss per answer token, exact-answer rate), teacher-forced: an answer is exact when the
    argmax equals it at every answer position, end of turn included (what greedy decoding gives)."""
    from selora_serve.training.trainer import _split_head

    model.eval()
    body, head = _split_head(model)
    device = head.weight.device
    loss_sum, tokens, exact = 0.0, 0, 0
    for i in range(0, len(examples), batch):
        b = {k: v.to(device) for k, v in collate(examples[i : i + batch], pad_id).items()}
        hidden = body(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)[0][:, :-1]
        labels = b["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        logits = head(hidden[keep]).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum").item()
        tokens += int(keep.sum())
        correct = torch.ones_like(labels, dtype=torch.bool)
        correct[keep] = logits.argmax(-1) == labels[keep]
        exact += int(correct.all(dim=1).sum())
    return loss_sum / tokens, exact / len(examples)
