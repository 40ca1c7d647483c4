"""The Ray Serve LLM app, driven over real HTTP with the official `openai` client.

Greedy answers for SeLoRA, dense PEFT and s3:// adapters equal transformers + PEFT, through
`BASE:ADAPTER` ids and bare names; /v1/models lists the store; unknown 404, corrupt 400, bucket
down 503, as the single server answers; tenants as `selora-serve --tenants`; two replicas: each
adapter fetched at most once per replica, requests stay on the replica that holds an adapter, what
Ray evicts leaves vLLM too; a replica killed mid-traffic comes back and no answer is ever wrong;
nothing of the cluster leaves loopback.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import os
import signal
import time
import urllib.error
import urllib.request

import openai
import pytest

from ..vllm.conftest import MAX_NEW_TOKENS
from .conftest import BASE, HELD, KEYS, REPLICAS

pytestmark = pytest.mark.vllm

PROMPTS = ("the cat is", "one two three four")
TOKENS = MAX_NEW_TOKENS  # the reference's length
GREEDY = dict(max_tokens=TOKENS, temperature=0, extra_body={"min_tokens": TOKENS, "return_token_ids": True})


def complete(client, model, prompts=PROMPTS) -> list[list[int]]:
    return [list(client.completions.create(model=model, prompt=p, **GREEDY).choices[0].model_extra["token_ids"])
            for p in prompts]


@pytest.mark.parametrize("name", ["haar", "db4", "fourier", "dense", "remote-haar"])
def test_answers_equal_transformers_peft(ray_app, reference, name):
    want = reference(ray_app.ckpts[name], PROMPTS)
    assert complete(ray_app.client(), f"{BASE}:{name}") == want
    assert complete(ray_app.client(), name) == want, "a bare adapter name is served as BASE:NAME"


def test_base_model_and_chat(ray_app, reference):
    assert complete(ray_app.client(), BASE) == reference(None, PROMPTS)
    messages = [{"role": "user", "content": "the cat is"}]
    prompt = reference.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    resp = ray_app.client().chat.completions.create(model=f"{BASE}:fourier", messages=messages, **GREEDY)
    assert list(resp.choices[0].model_extra["token_ids"]) == reference(ray_app.ckpts["fourier"], (prompt,))[0]


def test_models_lists_the_store(ray_app):
    ids = {m.id for m in ray_app.client().models.list().data}
    assert ids == {BASE, *(f"{BASE}:{n}" for n in ("affinity", "bad", "concurrent", "db4", "dense",
                                                     "fourier", "haar", "remote-fourier", "remote-haar"))}
    assert ray_app.client().models.retrieve(f"{BASE}:haar").id == f"{BASE}:haar"


def test_errors_answer_as_the_single_server(ray_app):
    client = ray_app.client()
    for model in (f"{BASE}:nope", "nope"):
        with pytest.raises(openai.NotFoundError) as missing:
            client.completions.create(model=model, prompt="x", max_tokens=2)
        assert missing.value.body == {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                                      "param": "model", "code": 404}
    with pytest.raises(openai.BadRequestError, match=r"adapter 'bad': selora_coefficients.safetensors"):
        client.completions.create(model="bad", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="leave the adapter store"):
        client.completions.create(model=f"{BASE}:../haar", prompt="x", max_tokens=2)
    assert complete(client, "haar")[0], "the others keep answering"


def test_bucket_down_is_503_and_loaded_adapters_keep_answering(ray_app, reference):
    client = ray_app.client()
    want = reference(ray_app.ckpts["remote-haar"], PROMPTS)
    assert complete(client, "remote-haar") == want  # loaded (on some replica) while the bucket is up
    ray_app.s3.proxy.set_mode("refuse")
    try:
        with pytest.raises(openai.APIStatusError) as down:
            client.completions.create(model="remote-fourier", prompt="x", max_tokens=2)
        assert down.value.status_code == 503 and "unavailable" in down.value.body["message"]
        assert complete(client, "haar")[0]
    finally:
        ray_app.s3.proxy.set_mode("pass")
    assert complete(client, "remote-fourier") == reference(ray_app.ckpts["remote-fourier"], PROMPTS)


def _status(url: str, key: str | None, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_tenants(ray_app):
    acme, beta = ray_app.client(KEYS["acme"]), ray_app.client(KEYS["beta"])
    with pytest.raises(openai.AuthenticationError):
        ray_app.client("wrong-key").models.list()
    assert _status(f"{ray_app.url}/v1/models", None) == 401
    assert complete(acme, f"{BASE}:haar", PROMPTS[:1]) and complete(acme, "haar", PROMPTS[:1])
    for model in ("fourier", f"{BASE}:fourier", f"{BASE}:nope"):
        with pytest.raises(openai.NotFoundError) as refused:
            acme.completions.create(model=model, prompt="x", max_tokens=2)
        assert refused.value.body["message"] == f"The model `{model}` does not exist."
    with pytest.raises(openai.NotFoundError):
        beta.completions.create(model=BASE, prompt="x", max_tokens=2)  # base_model = false
    assert {m.id for m in acme.models.list().data} == {BASE, f"{BASE}:haar", f"{BASE}:remote-fourier",
                                                         f"{BASE}:remote-haar"}
    assert {m.id for m in beta.models.list().data} == {f"{BASE}:fourier"}
    assert _status(f"{ray_app.url}/v1/selora/replicas", KEYS["acme"]) == 403
    assert _status(f"{ray_app.url}/v1/selora/replicas", KEYS["admin"]) == 404  # the admin passes; no such route


def test_two_replicas_fetch_once_each_and_keep_affinity(ray_app):
    client = ray_app.client()
    assert all(f"{BASE}:affinity" not in s["held"] for s in ray_app.replica_states().values())
    complete(client, "affinity", PROMPTS[:1])
    time.sleep(3)  # the replica tells Serve's router what it holds (pushed every 0.1 s, then broadcast)
    for _ in range(6):
        complete(client, "affinity", PROMPTS[:1])
    states = ray_app.replica_states()
    assert len(states) == REPLICAS, states
    holders = [r for r, s in states.items() if f"{BASE}:affinity" in s["held"]]
    assert len(holders) == 1, f"sequential requests for one adapter stayed on one replica: {states}"
    for state in states.values():
        fetched = [name for name, _, _ in state["fetches"]]
        assert len(fetched) == len(set(fetched)), f"each adapter fetched at most once per replica: {state}"
        assert set(state["loaded"]) <= set(state["held"]), f"what Ray evicted left vLLM too: {state}"


def test_eviction_unloads_from_vllm(ray_app):
    client = ray_app.client()
    for name in ("haar", "db4", "fourier", "dense", "remote-haar", "haar", "db4"):
        complete(client, name, PROMPTS[:1])
    for state in ray_app.replica_states().values():
        assert len(state["held"]) <= HELD
        assert set(state["loaded"]) <= set(state["held"]), state


def test_selora_metrics_reach_rays_export_per_replica(ray_app):
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    complete(ray_app.client(), "remote-haar", PROMPTS[:1])
    replicas = set(ray_app.replica_states())
    deadline, selora = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            selora = [line for line in resp.read().decode().splitlines() if line.startswith("ray_selora_")]
        loads = [line for line in selora if line.startswith("ray_selora_adapter_loads_total{")]
        if ({r for r in replicas if any(f'replica="{r}"' in line for line in loads)} == replicas
                and any(line.startswith("ray_selora_adapter_decode_seconds_count{") for line in selora)
                and any(line.startswith("ray_selora_adapter_requests_total{") for line in selora)
                and any(line.startswith("ray_selora_adapters_resident{") and 'tier="host"' in line for line in selora)):
            return
        time.sleep(3)
    pytest.fail(f"selora_* metrics of replicas {replicas} not all in Ray's export: {selora[:40]}")


def test_concurrent_first_requests_load_once(ray_app, reference):
    """Ray's own path answers 500 to the second of two concurrent first requests for an adapter."""
    client = ray_app.client()
    assert all(f"{BASE}:concurrent" not in s["held"] for s in ray_app.replica_states().values())
    with cf.ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda _: complete(client, "concurrent", PROMPTS[:1]), range(6)))
    assert outs == [reference(ray_app.ckpts["concurrent"], PROMPTS[:1])] * 6


def _cluster_sockets():
    import psutil

    me = psutil.Process()
    found = []
    for proc in me.children(recursive=True):
        try:
            conns = proc.net_connections(kind="inet")
            name = " ".join(proc.cmdline())[:120]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(name, c) for c in conns]
    return found


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback  # ::ffff:127.0.0.1 (Python < 3.13 says not loopback)


def test_nothing_leaves_loopback(ray_app):
    sockets = _cluster_sockets()
    assert len(sockets) > 20, "the audit sees the cluster's processes"
    connected = [(n, c) for n, c in sockets if c.raddr and not (_loopback(c.laddr.ip) and _loopback(c.raddr.ip))]
    assert connected == [], f"connections off loopback: {connected}"
    listeners = [(n, c) for n, c in sockets if not c.raddr and c.status == "LISTEN" and not _loopback(c.laddr.ip)]
    # Ray 2.60 hard-codes each Serve replica's inter-deployment gRPC server to [::]:0 (see ray/loopback.py).
    unexpected = [(n, c) for n, c in listeners if not (c.laddr.ip in ("::", "0.0.0.0") and "ServeReplica" in n)]
    assert unexpected == [], f"listeners off loopback: {unexpected}"


def test_a_killed_replica_is_restarted_and_no_answer_is_wrong(ray_app, reference):
    client = ray_app.client()
    want = reference(ray_app.ckpts["haar"], PROMPTS[:1])
    victim = next(iter(ray_app.replica_states().values()))
    results: list = []

    def traffic(deadline: float):
        while time.monotonic() < deadline:
            try:
                results.append(complete(client, "haar", PROMPTS[:1]))
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                results.append(exc)

    with cf.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(traffic, time.monotonic() + 20) for _ in range(2)]
        time.sleep(3)
        os.kill(victim["pid"], signal.SIGKILL)
        for f in running:
            f.result()
    answers = [r for r in results if not isinstance(r, Exception)]
    assert answers and all(a == want for a in answers), "no wrong answer, ever"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        states = ray_app.replica_states(8)
        if len(states) == REPLICAS and victim["replica"] not in states:
            break
        time.sleep(5)
    else:
        pytest.fail(f"Ray did not restart the killed replica: {states}")
    assert complete(client, "haar", PROMPTS[:1]) == want
