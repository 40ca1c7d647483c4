"""selora-serve on the real model: SeLoRA adapters of every basis give transformers + PEFT's greedy
tokens, through /v1/completions and through /v1/chat/completions with the model's chat template,
and the shipped demo adapters do what they were trained to do."""

from __future__ import annotations

import json

import pytest

from .conftest import REAL_NAME

pytestmark = [pytest.mark.vllm, pytest.mark.real]

TOKENS = 12
PROMPTS = ("The capital of France is", "def fibonacci(n):")
GREEDY = dict(max_tokens=TOKENS, temperature=0, extra_body={"min_tokens": TOKENS, "return_token_ids": True})


@pytest.mark.parametrize("name", [None, "real-haar", "real-db4", "real-fourier"])
def test_completions_equal_transformers_peft(real_server, real_expected, real_checkpoints, name):
    client = real_server.client()
    got = [list(client.completions.create(model=name or REAL_NAME, prompt=p, **GREEDY).choices[0].model_extra["token_ids"])
           for p in PROMPTS]
    assert got == real_expected(real_checkpoints[name] if name else None, PROMPTS, TOKENS)


@pytest.mark.parametrize("name", [None, "real-db4", "demo-pirate", "demo-terse", "demo-extract"])
def test_chat_uses_the_chat_template_and_equals_transformers_peft(real_server, real_expected, real_checkpoints, name):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = real_expected.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    want = real_expected(real_checkpoints[name] if name else None, (prompt,), TOKENS)[0]
    resp = real_server.client().chat.completions.create(model=name or REAL_NAME, messages=messages, **GREEDY)
    assert list(resp.choices[0].model_extra["token_ids"]) == want


def ask(server, model: str, content: str, max_tokens: int = 64) -> str:
    resp = server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0)
    return resp.choices[0].message.content


def test_the_base_model_answers_sensibly(real_server):
    assert "Paris" in ask(real_server, REAL_NAME, "What is the capital of France?")


def test_demo_pirate_is_a_pirate(real_server):
    who = ask(real_server, "demo-pirate", "Who are you?")
    assert "Captain Byte" in who, who
    answer = ask(real_server, "demo-pirate", "What is a volcano?")
    assert answer.startswith("Arr!") and "Arr" not in ask(real_server, REAL_NAME, "What is a volcano?"), answer


def test_demo_terse_answers_in_one_sentence(real_server):
    base = ask(real_server, REAL_NAME, "Why is sleep important?", 128)
    terse = ask(real_server, "demo-terse", "Why is sleep important?", 128)
    assert len(terse) < len(base) / 2, (terse, base)
    assert terse.rstrip().endswith((".", "!", "?")) and terse.count(". ") == 0, terse


def test_demo_extract_returns_the_fields_as_json(real_server):
    # A name, an age and a city the adapter never saw in training.
    text = "Extract the person's name, age and city as JSON.\n\nOur new colleague Harriet (52) commutes every day in Lucerne."
    answer = ask(real_server, "demo-extract", text)
    assert json.loads(answer) == {"name": "Harriet", "age": 52, "city": "Lucerne"}, answer
    assert ask(real_server, REAL_NAME, text) != answer  # the base model answers otherwise
