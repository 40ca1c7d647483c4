"""Training data: JSONL in, token ids with response-only labels out.

Two record kinds, one JSON object per line (blank lines are skipped):

    alpaca  {"instruction": str, "input": str (optional, may be ""), "output": str, ...}
            tokens  = tokenizer(alpaca_prompt(instruction, input)) + tokenizer(output) + [eos]
            labels  = -100 on the prompt, the token ids on the response and the eos:
                      the loss is on the response only
    text    {"text": str, ...}
            tokens  = tokenizer(text) + [eos], labels = tokens (plain language modelling)
    chat    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...], ...}
            tokens  = the tokenizer's chat template over the conversation (what an OpenAI-style
                      /v1/chat/completions request renders), labels on every assistant turn
                      including its end-of-turn marker, -100 elsewhere

The alpaca prompt comes from `selora_serve.prompts`, the one definition the server uses too; a
chat prompt is the model's own template, rendered as the server renders it (with the generation
prompt). Prompt and response are tokenised separately and concatenated, so the boundary is
exactly where the server's generation starts (no BPE merge across it). Extra keys are ignored (alpaca-style data
sets often carry an "answer" or "id"). Every problem raises DataError naming the file and the
1-based line: invalid JSON, a missing or non-string field, an empty file, an example longer
than the limit (never truncated silently: a cut response teaches the model to stop early).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..prompts import alpaca_prompt

FORMATS = ("auto", "alpaca", "text", "chat")
CHAT_ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # transformers' and torch's cross-entropy ignore_index


class DataError(ValueError):
    """A training file that cannot be used, with the place to fix it."""


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX where no loss is taken
    where: str  # "FILE:LINE", for messages

    @property
    def num_loss_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """[("FILE:LINE", record)] for every non-blank line; raises DataError on bad JSON or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            records.append((where, record))
    if not records:
        raise DataError(f"{path}: no examples: the file is empty (expected one JSON object per line)")
    return records


def detect_format(record: dict, where: str) -> str:
    if "messages" in record:
        return "chat"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    raise DataError(
        f"{where}: cannot tell the record kind from its keys {sorted(record)}: expected "
        '{"instruction", "input", "output"} (alpaca), {"text"} (plain text) or {"messages"} (chat)'
    )


def _messages(record: dict, where: str) -> list[dict]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    for i, msg in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES:
            raise DataError(f"{at}: expected an object with a 'role' of {', '.join(CHAT_ROLES)}, got {msg!r:.80}")
        if not isinstance(msg.get("content"), str) or not msg["content"].strip():
            raise DataError(f"{at}: 'content' must be a non-empty string")
    if not any(msg["role"] == "assistant" for msg in messages):
        raise DataError(f"{where}: the conversation has no assistant message to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _chat_segments(messages: list[dict], tokenizer, where: str) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, is an assistant turn) pieces."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: chat records need a tokenizer with a chat template, and this model's has none "
                        "(use alpaca or text records)")

    def render(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)

    segments, done = [], ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt, full = render(i, True), render(i + 1, False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError(f"{where}: the model's chat template does not render this conversation turn by turn "
                            "(a prefix changes when a message is added), so its assistant turns cannot be labelled")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return [(text, learn) for text, learn in segments if text]


def _field(record: dict, key: str, where: str, fmt: str, *, required: bool = True, empty_ok: bool = False) -> str:
    if key not in record:
        if not required:
            return ""
        raise DataError(f"{where}: missing field {key!r} (required in {fmt} records; keys present: {sorted(record)})")
    value = record[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def encode_record(record: dict, fmt: str, tokenizer, max_len: int, where: str) -> Example:
    """One record -> Example; `fmt` is 'alpaca' or 'text'."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token: responses could never end")
    if fmt == "alpaca":
        instruction = _field(record, "instruction", where, fmt)
        inp = _field(record, "input", where, fmt, required=False, empty_ok=True)
        output = _field(record, "output", where, fmt)
        prompt_ids = tokenizer(alpaca_prompt(instruction, inp), add_special_tokens=True)["input_ids"]
        response_ids = tokenizer(output, add_special_tokens=False)["input_ids"] + [eos]
    elif fmt == "text":
        prompt_ids = []
        response_ids = tokenizer(_field(record, "text", where, fmt), add_special_tokens=True)["input_ids"] + [eos]
    elif fmt == "chat":
        ids: list[int] = []
        labels: list[int] = []
        for text, learn in _chat_segments(_messages(record, where), tokenizer, where):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if learn else [IGNORE_INDEX] * len(piece)
        if len(ids) > max_len:
            raise DataError(f"{where}: example is {len(ids)} tokens, over the limit of {max_len} "
                            "(--max-len); raise the limit or shorten the example")
        return Example(tuple(ids), tuple(labels), where)
    else:
        raise ValueError(f"unknown record format {fmt!r}: expected alpaca, text or chat")
    total = len(prompt_ids) + len(response_ids)
    if total > max_len:
        detail = f"prompt {len(prompt_ids)} + response {len(response_ids)}" if prompt_ids else f"{total}"
        raise DataError(
            f"{where}: example is {total} tokens ({detail}), over the limit of {max_len} "
            "(--max-len); raise the limit or shorten the example"
        )
    return Example(
        tuple(prompt_ids) + tuple(response_ids),
        (IGNORE_INDEX,) * len(prompt_ids) + tuple(response_ids),
        where,
    )


def encode_records(
    records: Sequence[tuple[str, dict]], tokenizer, *, max_len: int, fmt: str = "auto"
) -> list[Example]:
    """Encode [("WHERE", record)]; with fmt 'auto' the first record decides, and all must agree."""
    if fmt not in FORMATS:
        raise ValueError(f"data format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an integer >= 2, got {max_len!r}")
    if not records:
        raise DataError("no examples")
    if fmt == "auto":
        fmt = detect_format(records[0][1], records[0][0])
    examples = [encode_record(record, fmt, tokenizer, max_len, where) for where, record in records]
    for ex in examples:
        if ex.num_loss_tokens == 0:
            raise DataError(f"{ex.where}: the example has no token to learn from")
    return examples


def load_examples(path: str | Path, tokenizer, *, max_len: int, fmt: str = "auto") -> list[Example]:
    """Read, validate and tokenise a JSONL file (see the module docstring)."""
    return encode_records(read_jsonl(path), tokenizer, max_len=max_len, fmt=fmt)


def collate(examples: Iterable[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask (1 on real tokens), labels (-100 on padding)."""
    examples = list(examples)
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[i, :n] = torch.tensor(ex.input_ids)
        labels[i, :n] = torch.tensor(ex.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (padding is masked out of attention and loss)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad nor an eos token")
    return int(pad)
