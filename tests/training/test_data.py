"""Training data: the Alpaca template, response-only labels, and errors that name the line."""

import json

import pytest
import torch

from selora_serve.prompts import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, alpaca_prompt
from selora_serve.training.data import IGNORE_INDEX, DataError, collate, load_examples

from .conftest import write_jsonl


def test_alpaca_template_is_stanford_alpacas():
    # The text of tatsu-lab/stanford_alpaca's PROMPT_DICT, which the paper's recipe uses.
    assert alpaca_prompt("Add.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n"
    )
    assert alpaca_prompt("Name a colour.") == alpaca_prompt("Name a colour.", "  ") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a colour.\n\n### Response:\n"
    )
    assert "{input}" in ALPACA_WITH_INPUT and "{input}" not in ALPACA_NO_INPUT


def test_loss_is_on_the_response_and_eos_only(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "name the bird", "input": "red", "output": "blue cat"}])
    (ex,) = load_examples(path, tokenizer, max_len=256)
    prompt = tokenizer(alpaca_prompt("name the bird", "red"))["input_ids"]
    response = tokenizer("blue cat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert list(ex.input_ids) == prompt + response
    assert list(ex.labels) == [IGNORE_INDEX] * len(prompt) + response
    assert ex.num_loss_tokens == len(response) and ex.where == f"{path}:1"


def test_plain_text_learns_every_token(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat is red"}, {"text": "a dog", "source": "x"}])
    examples = load_examples(path, tokenizer, max_len=64)
    assert [list(e.labels) for e in examples] == [list(e.input_ids) for e in examples]
    assert examples[0].input_ids[-1] == tokenizer.eos_token_id


def test_collate_pads_right_and_masks_padding(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat is red and blue"}, {"text": "a"}])
    examples = load_examples(path, tokenizer, max_len=64)
    batch = collate(examples, pad_id=0)
    n0, n1 = len(examples[0].input_ids), len(examples[1].input_ids)
    assert batch["input_ids"].shape == (2, n0) and n1 < n0
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (batch["labels"][1, n1:] == IGNORE_INDEX).all() and (batch["input_ids"][1, n1:] == 0).all()
    assert torch.equal(batch["labels"][0], torch.tensor(examples[0].labels))


def _error(tmp_path, tokenizer, text: str, **kw) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_examples(path, tokenizer, max_len=kw.pop("max_len", 256), **kw)
    return str(info.value)


GOOD = json.dumps({"instruction": "name the bird", "output": "red"})


@pytest.mark.parametrize(
    "text, line, words",
    [
        (f"{GOOD}\n\n" + json.dumps({"instruction": "x"}) + "\n", 3, ["missing field 'output'"]),
        (f"{GOOD}\n" + json.dumps({"text": "a cat"}) + "\n", 2, ["missing field 'instruction'"]),
        (f"{GOOD}\n{{\"instruction\": \"a\",\n", 2, ["invalid JSON"]),
        (f"{GOOD}\n[1, 2]\n", 2, ["expected a JSON object"]),
        (f"{GOOD}\n" + json.dumps({"instruction": "a", "output": 3}) + "\n", 2, ["'output' must be a string"]),
        (f"{GOOD}\n" + json.dumps({"instruction": "a", "output": " "}) + "\n", 2, ["'output' is empty"]),
        (json.dumps({"prompt": "a", "completion": "b"}) + "\n", 1, ["cannot tell", "alpaca", "text"]),
    ],
    ids=["missing-output", "mixed-kinds", "invalid-json", "not-an-object", "not-a-string", "empty-output", "unknown-kind"],
)
def test_bad_records_name_file_and_line(tmp_path, tokenizer, text, line, words):
    message = _error(tmp_path, tokenizer, text)
    assert f"bad.jsonl:{line}: " in message, message
    for word in words:
        assert word in message, message


def test_too_long_names_the_line_and_the_limit(tmp_path, tokenizer):
    long = json.dumps({"instruction": "name the bird", "output": " ".join(["red cat"] * 40)})
    message = _error(tmp_path, tokenizer, f"{GOOD}\n{GOOD}\n{long}\n", max_len=80)
    assert "bad.jsonl:3: " in message and "over the limit of 80" in message and "--max-len" in message


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file_is_an_error(tmp_path, tokenizer, text):
    assert "no examples: the file is empty" in _error(tmp_path, tokenizer, text)


def test_forced_format_and_missing_file(tmp_path, tokenizer):
    message = _error(tmp_path, tokenizer, GOOD + "\n", fmt="text")
    assert "bad.jsonl:1: missing field 'text'" in message
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_examples(tmp_path / "nope.jsonl", tokenizer, max_len=64)


@pytest.mark.parametrize("name, records", [("pirate", 253), ("terse", 226), ("extract", 480)])
def test_the_demo_adapters_data_loads(tokenizer, name, records):
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "examples" / "demo" / f"{name}.jsonl"
    examples = load_examples(path, tokenizer, max_len=1024)
    assert len(examples) == records and all(ex.num_loss_tokens > 0 for ex in examples)


CHAT = {"messages": [{"role": "user", "content": "name the bird"}, {"role": "assistant", "content": "red house"},
                     {"role": "user", "content": "and the cat"}, {"role": "assistant", "content": "blue mountain"}]}


def test_chat_records_learn_the_assistant_turns_as_the_server_renders_them(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT])
    (ex,) = load_examples(path, tokenizer, max_len=256)
    # The whole conversation is the chat template's rendering, token for token.
    assert list(ex.input_ids) == tokenizer(tokenizer.apply_chat_template(CHAT["messages"], tokenize=False),
                                           add_special_tokens=False)["input_ids"]
    # Each assistant turn starts exactly where the server's generation would (template with the
    # generation prompt), and only the assistant turns carry labels.
    first_prompt = tokenizer(tokenizer.apply_chat_template(CHAT["messages"][:1], tokenize=False,
                                                           add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert all(label == IGNORE_INDEX for label in ex.labels[: len(first_prompt)])
    assert ex.labels[len(first_prompt)] == ex.input_ids[len(first_prompt)]
    learned = tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX])
    assert learned == "red house\nblue mountain\n"  # the tiny template ends each turn with a newline


@pytest.mark.parametrize("record, message", [
    ({"messages": []}, "field 'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "the conversation has no assistant message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0]: expected an object with a 'role' of system, user, assistant"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}, "messages[0]: 'content' must be a non-empty string"),
])
def test_bad_chat_records_name_the_line_and_field(tmp_path, tokenizer, record, message):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT, record])
    with pytest.raises(DataError) as err:
        load_examples(path, tokenizer, max_len=256)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_chat_records_need_a_chat_template(tmp_path, tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT])
    with pytest.raises(DataError, match=r"c.jsonl:1: chat records need a tokenizer with a chat template"):
        load_examples(path, plain, max_len=256)
