"""`selora-serve --tenants`: each tenant reaches only its own adapters, through the official client.

A second, short-lived server (the tenants file is a start-up option) over its own small store.
Its last test SIGKILLs it and starts it again: the store is unchanged and served the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest

from selora_serve.tenants import hash_key

from .conftest import start_server, stop_server
from .test_server import PROMPTS, complete

pytestmark = pytest.mark.vllm

KEYS = {"acme": "sk-acme-0123456789", "beta": "sk-beta-0123456789", "admin": "sk-admin-0123456789"}
STORE = {"acme-haar": "haar", "beta-db4": "db4", "shared-fourier": "fourier"}
BASE = "tiny"


def tenants_toml(path):
    path.write_text(f"""
[admin]
key_sha256 = "{hash_key(KEYS['admin'])}"

[[tenant]]
name = "acme"
key_sha256 = "{hash_key(KEYS['acme'])}"
adapters = ["acme-*", "shared-*"]

[[tenant]]
name = "beta"
key_sha256 = "{hash_key(KEYS['beta'])}"
adapters = ["beta-*", "shared-*"]
base_model = false
""")
    return path


@pytest.fixture(scope="module")
def tenant_server(tiny_model, checkpoints, tmp_path_factory):
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("tenants")
    for name, src in STORE.items():
        shutil.copytree(checkpoints[src], root / "store" / name)
    args = ["--model", str(tiny_model), "--adapters", str(root / "store"), "--served-model-name", BASE,
            "--tenants", str(tenants_toml(root / "tenants.toml")), "--max-loras", "2"]
    # vLLM's Responses API store on: stored responses must stay each tenant's own.
    srv = start_server(args, root / "selora-serve.log", env={"VLLM_ENABLE_RESPONSES_API_STORE": "1"})
    srv.store, srv.args = root / "store", args
    yield srv
    stop_server(srv)


def client(server, who):
    return server.client(api_key=KEYS[who])


def raw(server, path, body=None, key=None):
    """(status, headers, body bytes) of one request, for byte-exact comparisons."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{server.url}{path}", data, headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_each_tenant_lists_only_what_it_may_use(tenant_server):
    ids = {who: {m.id for m in client(tenant_server, who).models.list().data} for who in KEYS}
    assert ids["acme"] == {BASE, "acme-haar", "shared-fourier"}
    assert ids["beta"] == {"beta-db4", "shared-fourier"}
    assert ids["admin"] == {BASE, *STORE}
    # Tenants are not shown the server's paths (vLLM reports them as `root`).
    for model in client(tenant_server, "acme").models.list().data:
        assert model.root == model.id, model


def test_tenant_outputs_are_its_adapters(tenant_server, expected, checkpoints):
    assert complete(client(tenant_server, "acme"), "acme-haar", PROMPTS[:2]) == expected(checkpoints["haar"], PROMPTS)[:2]
    assert complete(client(tenant_server, "beta"), "shared-fourier", PROMPTS[:1]) == expected(checkpoints["fourier"], PROMPTS)[:1]


def test_stored_responses_are_each_tenants_own(tenant_server):
    acme, beta, admin = (KEYS[who] for who in ("acme", "beta", "admin"))
    # beta uses the shared adapter: a later test checks that beta-db4 was never loaded.
    ask = {"input": "the cat is", "max_output_tokens": 3, "temperature": 0}
    status, _, text = raw(tenant_server, "/v1/responses", {"model": "acme-haar", **ask}, acme)
    assert status == 200, text
    rid = json.loads(text)["id"]
    assert raw(tenant_server, f"/v1/responses/{rid}", key=acme)[0] == 200
    assert raw(tenant_server, f"/v1/responses/{rid}", key=admin)[0] == 200
    # Another tenant gets vLLM's own answer for an id that does not exist (asked by the admin,
    # whom the guard lets through to vLLM), for reading, cancelling and continuing alike.
    ghost = "resp_" + "0" * 32
    st, _, vllm_body = raw(tenant_server, f"/v1/responses/{ghost}", key=admin)
    assert st == 404
    for path, body in ((f"/v1/responses/{rid}", None), (f"/v1/responses/{rid}/cancel", {})):
        st, _, got = raw(tenant_server, path, body, beta)
        assert (st, got) == (404, vllm_body.replace(ghost.encode(), rid.encode())), path
    st, _, got = raw(tenant_server, "/v1/responses", {"model": "shared-fourier", **ask, "previous_response_id": rid}, beta)
    assert st == 404 and json.loads(got)["error"]["message"] == f"Response with id '{rid}' not found."
    # ... and cannot overwrite it by choosing its id.
    st, _, got = raw(tenant_server, "/v1/responses", {"model": "shared-fourier", **ask, "request_id": rid}, beta)
    assert st == 409 and "already in use" in json.loads(got)["error"]["message"]
    assert json.loads(raw(tenant_server, f"/v1/responses/{rid}", key=acme)[2])["model"] == "acme-haar"
    # Streamed responses are recorded too (their id comes in the first event).
    events = list(client(tenant_server, "beta").responses.create(model="shared-fourier", stream=True, **ask))
    streamed = events[0].response.id
    assert client(tenant_server, "beta").responses.retrieve(streamed).id == streamed
    with pytest.raises(openai.NotFoundError):
        client(tenant_server, "acme").responses.retrieve(streamed)
    # The owner may continue its own.
    st, _, got = raw(tenant_server, "/v1/responses", {"model": "acme-haar", **ask, "previous_response_id": rid}, acme)
    assert st == 200, got


def test_another_tenants_adapter_answers_exactly_like_an_unknown_one(tenant_server):
    body = {"model": None, "prompt": "the cat", "max_tokens": 2}
    # acme-ghost matches acme's patterns but does not exist: vLLM itself answers that one.
    unknown = raw(tenant_server, "/v1/completions", {**body, "model": "acme-ghost"}, KEYS["acme"])
    forbidden = raw(tenant_server, "/v1/completions", {**body, "model": "beta-db4"}, KEYS["acme"])
    outside = raw(tenant_server, "/v1/completions", {**body, "model": "zzz-ghost"}, KEYS["acme"])
    assert unknown[0] == forbidden[0] == outside[0] == 404
    assert b"Valid aliases: tiny." in unknown[2]
    assert forbidden[2].replace(b"beta-db4", b"X") == unknown[2].replace(b"acme-ghost", b"X") \
        == outside[2].replace(b"zzz-ghost", b"X")
    drop = {"date", "server"}
    assert {k: v for k, v in forbidden[1].items() if k.lower() not in drop} == \
        {k: v for k, v in unknown[1].items() if k.lower() not in drop | {"content-length"}} | \
        {"content-length": str(len(forbidden[2]))}
    # The same through chat, and beta asking for the base model it may not use.
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    a = raw(tenant_server, "/v1/chat/completions", {**chat, "model": "acme-ghost"}, KEYS["acme"])
    b = raw(tenant_server, "/v1/chat/completions", {**chat, "model": "beta-db4"}, KEYS["acme"])
    assert a[0] == b[0] == 404 and a[2].replace(b"acme-ghost", b"X") == b[2].replace(b"beta-db4", b"X")
    assert raw(tenant_server, "/v1/completions", {**body, "model": BASE}, KEYS["beta"])[0] == 404
    with pytest.raises(openai.NotFoundError):
        client(tenant_server, "beta").completions.create(model="acme-haar", prompt="x", max_tokens=1)
    # Nothing was loaded on acme's behalf.
    listing = json.loads(raw(tenant_server, "/v1/selora/adapters", key=KEYS["admin"])[2])["data"]
    assert not next(a for a in listing if a["name"] == "beta-db4")["state"]["loaded"]


def test_keys_are_required_and_admin_routes_need_the_admin_key(tenant_server):
    with pytest.raises(openai.AuthenticationError):
        tenant_server.client(api_key="sk-wrong").models.list()
    assert raw(tenant_server, "/v1/models")[0] == 401
    assert raw(tenant_server, "/health")[0] == 200 and raw(tenant_server, "/metrics")[0] == 200
    for path, body in [("/v1/selora/adapters", None), ("/v1/selora/adapters/acme-haar/load", {}),
                       ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/etc"}), ("/reset_prefix_cache", {})]:
        assert raw(tenant_server, path, body, KEYS["acme"])[0] == 403, path
    assert raw(tenant_server, "/v1/selora/adapters/beta-db4/load", {}, KEYS["admin"])[0] == 200
    assert raw(tenant_server, "/v1/selora/adapters/beta-db4/unload", {}, KEYS["admin"])[0] == 200


def test_requests_are_counted_per_tenant(tenant_server):
    client(tenant_server, "beta").models.list()
    text = raw(tenant_server, "/metrics")[2].decode()
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("selora_tenant_requests_total{")}
    assert counts['selora_tenant_requests_total{status="200",tenant="beta"}'] >= 1
    assert counts['selora_tenant_requests_total{status="404",tenant="acme"}'] >= 1
    assert counts['selora_tenant_requests_total{status="401",tenant="unauthenticated"}'] >= 1


def _store_digest(store):
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}


def test_server_killed_and_restarted_serves_the_same_store(tenant_server):
    """Run last in this module: SIGKILL (no clean shutdown) mid-traffic, then start again."""
    before = _store_digest(tenant_server.store)
    outputs = complete(client(tenant_server, "acme"), "acme-haar", PROMPTS[:2])
    os.killpg(tenant_server.process.pid, signal.SIGKILL)
    tenant_server.process.wait(30)
    again = start_server(tenant_server.args, tenant_server.log.with_name("restarted.log"))
    try:
        assert _store_digest(tenant_server.store) == before
        assert complete(again.client(api_key=KEYS["acme"]), "acme-haar", PROMPTS[:2]) == outputs
    finally:
        stop_server(again)


@pytest.mark.parametrize("extra, message", [
    (["--api-key", "k"], "--tenants replaces vLLM's --api-key"),
    ([], "tenant 'acme'.key: plaintext keys are refused"),
])
def test_bad_tenant_options_stop_before_vllm_starts(tiny_model, checkpoints, tmp_path, extra, message):
    good = tenants_toml(tmp_path / "good.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tenant]]\nname = "acme"\nkey = "sk-plain"\nadapters = ["*"]\n')
    tenants = good if extra else bad
    proc = subprocess.run(
        [sys.executable, "-m", "selora_serve.serve.cli", "--model", str(tiny_model), "--adapters",
         str(checkpoints["haar"].parent), "--tenants", str(tenants), *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, "one clear line, and vLLM never started"
