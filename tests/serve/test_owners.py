"""`vllm_ext.owners`: which principal created each stored response, and the guard applying it
(no server: a stand-in ASGI app plays vLLM)."""

from __future__ import annotations

import asyncio
import json

import pytest

from selora_serve.vllm_ext.owners import ResponseOwners, stored_response_id


def test_stored_response_paths():
    assert stored_response_id("GET", "/v1/responses/resp_abc") == "resp_abc"
    assert stored_response_id("POST", "/v1/responses/resp_abc/cancel") == "resp_abc"
    assert stored_response_id("POST", "/v1/responses") is None
    assert stored_response_id("GET", "/v1/responses") is None
    assert stored_response_id("POST", "/v1/responses/resp_abc") is None
    assert stored_response_id("GET", "/v1/responses/resp_abc/input_items") is None


def _replay(owners, principal, status, chunks):
    sent = []

    async def send(message):
        sent.append(message)

    async def run():
        wrapped = owners.recording(send, principal)
        await wrapped({"type": "http.response.start", "status": status, "headers": []})
        for i, chunk in enumerate(chunks):
            await wrapped({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    asyncio.run(run())
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"".join(chunks)  # passed through unchanged


def test_json_reply_split_across_chunks_is_recorded_for_its_principal():
    owners = ResponseOwners()
    body = json.dumps({"id": "resp_1", "output": [{"id": "msg_9", "content": 'say "id": "resp_2"'}]}).encode()
    _replay(owners, "acme", 200, [body[:5], body[5:9], body[9:]])
    assert owners.owns("acme", "resp_1") and not owners.owns("beta", "resp_1")
    # Quotes in generated text are escaped in JSON: the text cannot claim another id.
    assert not owners.owns("acme", "resp_2") and not owners.owns("acme", "msg_9")


def test_stream_records_the_id_of_the_first_event():
    owners = ResponseOwners()
    first = {"response": {"id": "resp_s", "status": "in_progress"}, "sequence_number": 0, "type": "response.created"}
    events = [f"event: response.created\ndata: {json.dumps(first)}\n\n".encode(),
              b'event: response.output_text.delta\ndata: {"delta": "x", "item_id": "msg_1"}\n\n']
    _replay(owners, "beta", 200, events)
    assert owners.owns("beta", "resp_s") and not owners.owns("beta", "msg_1")


def test_errors_record_nothing_and_ids_keep_their_first_owner():
    owners = ResponseOwners()
    _replay(owners, "acme", 404, [json.dumps({"error": {"id": "resp_x"}}).encode()])
    assert not owners.owns("acme", "resp_x")
    assert owners.claim("acme", "resp_mine") and owners.claim("acme", "resp_mine")
    assert not owners.claim("beta", "resp_mine")
    _replay(owners, "beta", 200, [b'{"id": "resp_mine"}'])
    assert owners.owns("acme", "resp_mine") and not owners.owns("beta", "resp_mine")


def _call(guard, method, path, key, body=None):
    """One request through the guard; (status, body) of what reached the client."""
    from types import SimpleNamespace as NS

    served = NS(state=NS(openai_serving_models=NS(base_model_paths=[NS(name="tiny")])))
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": served,
             "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]}
    messages = [{"type": "http.request", "body": json.dumps(body).encode() if body is not None else b"",
                 "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_guard_tracks_owners_only_while_vllms_response_store_is_on(tmp_path):
    pytest.importorskip("vllm")  # the guard's 404 body is built by vLLM
    from selora_serve.tenants import load_tenants
    from selora_serve.vllm_ext.guard import Guard

    from .test_tenants import KEYS, tenants_toml

    async def app(scope, receive, send):  # stands in for vLLM: every response is "resp_1"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"id": "resp_1"}', "more_body": False})

    tenants = load_tenants(tenants_toml(tmp_path / "tenants.toml"))
    off = Guard(app, tenants, response_store=False)
    assert off.owners is None
    assert _call(off, "POST", "/v1/responses", KEYS["acme"], {"model": "acme-haar", "input": "x"})[0] == 200
    assert _call(off, "GET", "/v1/responses/resp_1", KEYS["beta"]) == (200, b'{"id": "resp_1"}')  # vLLM decides
    on = Guard(app, tenants, response_store=True)
    assert _call(on, "POST", "/v1/responses", KEYS["acme"], {"model": "acme-haar", "input": "x"})[0] == 200
    assert on.owners.owns("acme", "resp_1")
    assert _call(on, "GET", "/v1/responses/resp_1", KEYS["acme"])[0] == 200
    assert _call(on, "GET", "/v1/responses/resp_1", KEYS["beta"])[0] == 404
