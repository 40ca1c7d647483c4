"""The `selora-serve` process, driven with the official `openai` client.

Every adapter's greedy output equals transformers + PEFT on the same adapter converted by
`selora-convert to-peft`; adapters copied in after start-up are served; more adapters than
slots and host cache rotate through vLLM's LRU with outputs staying right; every error case
answers an OpenAI-style error body while the other adapters keep working.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request

import pytest

from .conftest import BASE_NAME, HOST_CACHE, MAX_NEW_TOKENS, PINNED, SLOTS

pytestmark = pytest.mark.vllm

PROMPTS = ("the cat is", "river and mountain", "one two three four")
GREEDY = dict(max_tokens=MAX_NEW_TOKENS, temperature=0, extra_body={"min_tokens": MAX_NEW_TOKENS, "return_token_ids": True})


def complete(client, model, prompts=PROMPTS) -> list[list[int]]:
    out = []
    for prompt in prompts:
        choice = client.completions.create(model=model, prompt=prompt, **GREEDY).choices[0]
        out.append(list(choice.model_extra["token_ids"]))
    return out


def ckpt_of(server, name):
    return server.store / name


@pytest.mark.parametrize("name", [None, "haar", "db4", "fourier"])
def test_completions_match_transformers_peft(server, expected, name):
    model = BASE_NAME if name is None else name
    assert complete(server.client(), model) == expected(None if name is None else ckpt_of(server, name), PROMPTS)


@pytest.mark.parametrize("name", [None, "haar", "db4", "fourier"])
def test_chat_matches_transformers_peft(server, expected, name):
    messages = [{"role": "user", "content": "the cat is"}]
    prompt = expected.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = expected(None if name is None else ckpt_of(server, name), (prompt,))[0]
    resp = server.client().chat.completions.create(model=name or BASE_NAME, messages=messages, **GREEDY)
    assert list(resp.choices[0].model_extra["token_ids"]) == want


@pytest.mark.parametrize("name", [None, "haar", "fourier"])
def test_streaming_equals_non_streaming(server, name):
    client = server.client()
    model = name or BASE_NAME
    params = dict(max_tokens=MAX_NEW_TOKENS, temperature=0, extra_body={"min_tokens": MAX_NEW_TOKENS})
    whole = client.completions.create(model=model, prompt=PROMPTS[0], **params).choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(model=model, prompt=PROMPTS[0], stream=True, **params) if c.choices]
    assert "".join(pieces) == whole
    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = client.chat.completions.create(model=model, messages=messages, **params).choices[0].message.content
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **params)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole


def test_models_lists_base_and_store_adapters(server):
    ids = {m.id for m in server.client().models.list().data}
    assert {BASE_NAME, "haar", "db4", "fourier"} <= ids


def _copy_in(src, store, name):
    """Copy atomically, as a deployment should: build hidden, then rename into place."""
    tmp = store / f".{name}.incoming"
    shutil.copytree(src, tmp)
    tmp.rename(store / name)


def test_adapter_copied_in_after_start_is_served(server, expected, spare_checkpoints):
    client = server.client()
    with pytest.raises(Exception) as info:
        client.completions.create(model="late-0", prompt="x", max_tokens=1)
    assert getattr(info.value, "status_code", None) == 404
    _copy_in(spare_checkpoints["late-0"], server.store, "late-0")
    assert complete(client, "late-0") == expected(spare_checkpoints["late-0"], PROMPTS)


def test_lru_rotation_keeps_outputs_right(server, expected, spare_checkpoints):
    """More adapters than slots + host cache: each round evicts and decodes again."""
    client = server.client()
    for name in ("late-1", "late-2"):
        if not (server.store / name).exists():
            _copy_in(spare_checkpoints[name], server.store, name)
    names = ["haar", "db4", "fourier", "late-1", "late-2"]
    assert len(names) > HOST_CACHE >= SLOTS
    for _ in range(2):
        for name in names:
            assert complete(client, name, PROMPTS[:2]) == expected(server.store / name, PROMPTS)[:2], name
    # The worker logs each decode (of the adapter's private snapshot, "<name>-<content hash>",
    # which the API process verified and marked): evicted adapters were decoded again, not kept
    # somewhere, and the worker skipped the checks the API process had done.
    log = server.log.read_text(errors="replace")
    decodes = re.findall(r"decoded SeLoRA adapter \S+/late-1-[0-9a-f]{16} \(\d+ modules(, verified snapshot)?\)", log)
    assert len(decodes) >= 2 and all(decodes), decodes


def _post(server, path, body):
    req = urllib.request.Request(f"{server.url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _error(server, model):
    status, text = _post(server, "/v1/completions", {"model": model, "prompt": "the cat", "max_tokens": 2})
    body = json.loads(text)
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    assert body["error"]["code"] == status
    return status, body["error"]


def test_unknown_adapter_is_404(server):
    status, err = _error(server, "no-such-adapter")
    assert status == 404 and err["type"] == "NotFoundError" and "no-such-adapter" in err["message"]


@pytest.mark.parametrize("name, reason", [
    ("corrupt", "not valid JSON"),
    ("truncated", "corrupt or truncated"),
    ("mismatched", "different base architecture"),
])
def test_broken_checkpoint_is_4xx_naming_reason_and_others_keep_working(server, expected, name, reason):
    status, err = _error(server, name)
    assert 400 <= status < 500, err
    assert f"'{name}'" in err["message"] and reason in err["message"], err
    assert complete(server.client(), "db4", PROMPTS[:1]) == expected(server.store / "db4", PROMPTS)[:1]


@pytest.mark.parametrize("name", ["../haar", "haar/../db4", "/etc", "escape"])
def test_names_leaving_the_store_are_refused(server, name):
    status, err = _error(server, name)
    assert status == 400 and "refused" in err["message"], err


def test_load_lora_adapter_route_accepts_selora_and_refuses_broken(server, expected):
    ok = _post(server, "/v1/load_lora_adapter", {"lora_name": "via-route", "lora_path": str(server.store / "fourier")})
    assert ok[0] == 200, ok
    assert complete(server.client(), "via-route", PROMPTS[:1]) == expected(server.store / "fourier", PROMPTS)[:1]
    status, text = _post(server, "/v1/load_lora_adapter", {"lora_name": "bad-route", "lora_path": str(server.store / "truncated")})
    err = json.loads(text)["error"]
    assert status == 400 and "bad-route" in err["message"] and "truncated" in err["message"], err


def test_explicit_path_is_snapshotted_so_the_source_may_change(server, expected, spare_checkpoints, tmp_path):
    """/v1/load_lora_adapter with a SeLoRA directory outside the store: the engine gets a
    verified snapshot (hard links of the files read), so deleting the directory later cannot break
    a reload after eviction."""
    for name in ("late-1", "late-2"):
        if not (server.store / name).exists():
            _copy_in(spare_checkpoints[name], server.store, name)
    source = shutil.copytree(server.store / "haar", tmp_path / "explicit")
    want = expected(server.store / "haar", PROMPTS)[:1]
    status, text = _post(server, "/v1/load_lora_adapter", {"lora_name": "explicit/one", "lora_path": str(source)})
    assert status == 200, text
    client = server.client()
    assert complete(client, "explicit/one", PROMPTS[:1]) == want
    shutil.rmtree(source)
    others = ["db4", "fourier", "late-1", "late-2", "haar"]
    assert len(others) > HOST_CACHE
    for name in others:  # evicts it from the host cache
        complete(client, name, PROMPTS[:1])
    assert complete(client, "explicit/one", PROMPTS[:1]) == want
    log = server.log.read_text(errors="replace")
    decodes = re.findall(r"decoded SeLoRA adapter \S+/explicit%2Fone-[0-9a-f]{16} \(\d+ modules(, verified snapshot)?\)", log)
    # Decoded again from the snapshot: the first time trusting its verified mark; after the source's
    # removal moved the linked inodes' ctime, the worker validates what it reads in full instead.
    assert len(decodes) >= 2 and decodes[0] and not decodes[-1], decodes


def _get(server, path):
    with urllib.request.urlopen(f"{server.url}{path}", timeout=60) as resp:
        return json.loads(resp.read())


def _state(server, name):
    return next(a for a in _get(server, "/v1/selora/adapters")["data"] if a["name"] == name)


def test_adapter_pinned_at_start_up_is_reported_pinned_and_never_evicted(server):
    """--pin at start-up; by now the LRU rotation above has cycled more adapters than fit."""
    assert _state(server, PINNED)["state"] == {"on_disk": True, "loaded": True, "host_cache": True, "slot": True, "pinned": True}


def test_pinning_an_adapter_the_host_cache_evicted_reloads_it(server, expected, spare_checkpoints):
    """vLLM pins only resident adapters; a name the API knows may have left the host cache."""
    for name in ("late-1", "late-2"):
        if not (server.store / name).exists():
            _copy_in(spare_checkpoints[name], server.store, name)
    client = server.client()
    others = ["db4", "late-2", "haar"]
    assert len(others) + 1 == HOST_CACHE  # with the pinned adapter, they fill the host cache
    for name in ["late-1", *others]:  # late-1 first, then pushed out
        complete(client, name, PROMPTS[:1])
    assert not _state(server, "late-1")["state"]["host_cache"]
    status, text = _post(server, "/v1/selora/adapters/late-1/pin", {})
    assert status == 200, text
    assert _state(server, "late-1")["state"]["pinned"] and _state(server, "late-1")["state"]["host_cache"]
    assert complete(client, "late-1", PROMPTS[:1]) == expected(server.store / "late-1", PROMPTS)[:1]
    assert _post(server, "/v1/selora/adapters/late-1/unpin", {})[0] == 200


def test_admin_lists_loads_pins_and_really_unloads(server, expected):
    listing = {a["name"]: a for a in _get(server, "/v1/selora/adapters")["data"]}
    facts = listing["fourier"]["facts"]
    assert facts["basis"] == "fourier" and facts["rank"] == 8 and facts["eta"] == 0.6 and facts["bytes"] > 0
    assert listing["corrupt"]["facts"]["kind"] == "selora" and "not valid JSON" in listing["corrupt"]["facts"]["error"]

    assert _post(server, "/v1/selora/adapters/db4/pin", {})[0] == 200
    assert _state(server, "db4")["state"] == {"on_disk": True, "loaded": True, "host_cache": True, "slot": True, "pinned": True}
    for name in ("haar", "fourier", "late-0"):  # traffic through the other slot
        complete(server.client(), name, PROMPTS[:1])
    state = _state(server, "db4")["state"]
    assert state["host_cache"] and state["slot"], "a pinned adapter is never evicted"
    # Slots: the two pinned adapters and the one just used; everything else is not in a slot.
    in_slot = {a["name"] for a in _get(server, "/v1/selora/adapters")["data"] if a["state"]["slot"]}
    assert in_slot == {PINNED, "db4", "late-0"}
    assert _post(server, "/v1/selora/adapters/db4/unpin", {})[0] == 200

    assert _post(server, "/v1/selora/adapters/db4/unload", {})[0] == 200
    assert _state(server, "db4")["state"] == {"on_disk": True, "loaded": False, "host_cache": False, "slot": False, "pinned": False}
    assert _post(server, "/v1/selora/adapters/db4/unload", {})[0] == 404
    assert complete(server.client(), "db4", PROMPTS[:1]) == expected(server.store / "db4", PROMPTS)[:1]

    status, text = _post(server, "/v1/selora/adapters/truncated/load", {})
    assert status == 400 and "truncated" in json.loads(text)["error"]["message"]
    assert _post(server, "/v1/selora/adapters/nope/pin", {})[0] == 404
