"""`vllm_ext.owners`: which principal created each stored response (pure, no server)."""

from __future__ import annotations

import asyncio
import json

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
