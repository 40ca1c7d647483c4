"""`selora-serve --adapters s3://BUCKET/PREFIX` end to end: a real server over a moto S3 server on
loopback (behind a fault proxy), a local store beside it, and tenants. Remote SeLoRA and dense PEFT
adapters answer like transformers + PEFT; concurrent first requests fetch once (counted on
/metrics); a corrupt object is a 400, a missing one a 404; with the store down or stalled, loaded
and cached adapters keep serving while the others get a 503 (never a 500); a restarted server
serves its cache without fetching, even while the store is down."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request

import pytest

from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE
from selora_serve.convert import to_peft
from selora_serve.store.s3local import endpoint_env

from .conftest import start_server, stop_server
from .test_metrics import Scrape
from .test_server import PROMPTS, complete
from .test_tenants import KEYS, tenants_toml

pytestmark = pytest.mark.vllm

BUCKET, PREFIX = "served", "adapters"
URL = f"s3://{BUCKET}/{PREFIX}"
REMOTE = {"acme-haar": "haar", "shared-fourier": "fourier", "beta-db4": "db4", "acme-late": "haar"}


@pytest.fixture(scope="module")
def s3_server(s3, tiny_model, checkpoints, tmp_path_factory):
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("s3-server")
    s3.create_bucket(BUCKET)
    for name, src in REMOTE.items():
        s3.upload_dir(BUCKET, f"{PREFIX}/{name}", checkpoints[src])
    s3.upload_dir(BUCKET, f"{PREFIX}/acme-dense", to_peft(checkpoints["db4"], root / "dense-db4"))
    data = (checkpoints["haar"] / COEF_FILE).read_bytes()
    s3.put(BUCKET, f"{PREFIX}/acme-cut/{COEF_FILE}", data[: len(data) // 3])
    s3.put(BUCKET, f"{PREFIX}/acme-cut/{CONFIG_FILE}", (checkpoints["haar"] / CONFIG_FILE).read_bytes())
    shutil.copytree(checkpoints["haar"], root / "local" / "acme-local")
    s3.proxy.set_mode("pass")
    args = ["--model", str(tiny_model), "--adapters", URL, "--adapters", str(root / "local"),
            "--adapter-cache-dir", str(root / "cache"), "--adapter-cache-bytes", "1G",
            "--served-model-name", "tiny", "--tenants", str(tenants_toml(root / "tenants.toml")),
            "--max-loras", "2", "--max-cpu-loras", "4"]
    env = {**endpoint_env(s3.proxy.url), "SELORA_ADAPTER_FETCH_TIMEOUT": "3"}
    srv = start_server(args, root / "selora-serve.log", env=env)
    srv.args, srv.env, srv.root = args, env, root
    yield srv
    s3.proxy.set_mode("pass")
    stop_server(srv)


def _request(server, path, body=None, who="admin"):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{server.url}{path}", data, {"Content-Type": "application/json",
                                                                "Authorization": f"Bearer {KEYS[who]}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _complete(server, model, who="admin"):
    return _request(server, "/v1/completions", {"model": model, "prompt": "the cat", "max_tokens": 2}, who)


def test_remote_selora_and_dense_adapters_match_transformers_peft(s3_server, expected, checkpoints):
    client = s3_server.client(api_key=KEYS["acme"])
    assert complete(client, "acme-haar") == expected(checkpoints["haar"], PROMPTS)
    assert complete(client, "acme-dense") == expected(checkpoints["db4"], PROMPTS)
    assert complete(client, "acme-local", PROMPTS[:1]) == expected(checkpoints["haar"], PROMPTS)[:1]


def test_listings_and_tenants_cover_remote_adapters(s3_server):
    acme = {m.id for m in s3_server.client(api_key=KEYS["acme"]).models.list().data}
    assert {"acme-haar", "acme-dense", "acme-local", "shared-fourier"} <= acme and "beta-db4" not in acme
    status, body = _complete(s3_server, "acme-haar", who="beta")
    nowhere = _complete(s3_server, "no-such-adapter", who="beta")
    assert status == 404 and nowhere[0] == 404
    assert body["error"]["message"].replace("acme-haar", "X") == nowhere[1]["error"]["message"].replace("no-such-adapter", "X")
    status, listing = _request(s3_server, "/v1/selora/adapters")
    by_name = {a["name"]: a for a in listing["data"]}
    assert by_name["acme-haar"]["facts"]["source"] == f"{URL}/acme-haar" and by_name["acme-haar"]["state"]["on_disk"]
    assert by_name["acme-haar"]["facts"]["rank"] == 8, "fetched: its manifest's facts are known"
    assert by_name["beta-db4"]["facts"] == {"kind": "selora", "source": f"{URL}/beta-db4",
                                            "bytes": by_name["beta-db4"]["facts"]["bytes"], "cached": False}
    assert "source" not in by_name["acme-local"]["facts"]


def test_concurrent_first_requests_fetch_once_and_are_counted(s3_server, checkpoints):
    async def burst():
        aclient = s3_server.async_client(api_key=KEYS["admin"])
        return await asyncio.gather(*(aclient.completions.create(model="shared-fourier", prompt="the cat", max_tokens=2)
                                      for _ in range(6)))

    assert len(asyncio.run(burst())) == 6
    size = sum((checkpoints["fourier"] / f).stat().st_size for f in (COEF_FILE, CONFIG_FILE))
    scrape = Scrape(s3_server)
    assert scrape.value("selora_adapter_fetch_bytes_total", adapter="shared-fourier") == size
    assert scrape.types["selora_adapter_fetch_seconds"] == "histogram"
    assert scrape.value("selora_adapter_fetch_seconds_count") >= 3  # acme-haar, acme-dense, shared-fourier
    assert s3_server.log.read_text().count("fetched adapter shared-fourier") == 1


def test_corrupt_object_is_400_and_missing_is_404(s3_server):
    status, body = _complete(s3_server, "acme-cut")
    assert status == 400 and "'acme-cut'" in body["error"]["message"] and "corrupt or truncated" in body["error"]["message"]
    assert _complete(s3_server, "acme-missing")[0] == 404
    assert _complete(s3_server, "acme-haar")[0] == 200


def test_a_replaced_object_is_fetched_again_after_unload(s3, s3_server, expected, checkpoints):
    client = s3_server.client(api_key=KEYS["admin"])
    assert complete(client, "acme-late", PROMPTS[:1]) == expected(checkpoints["haar"], PROMPTS)[:1]
    s3.upload_dir(BUCKET, f"{PREFIX}/acme-late", checkpoints["db4"])
    assert complete(client, "acme-late", PROMPTS[:1]) == expected(checkpoints["haar"], PROMPTS)[:1], "still loaded"
    assert _request(s3_server, "/v1/selora/adapters/acme-late/unload", {})[0] == 200
    assert complete(client, "acme-late", PROMPTS[:1]) == expected(checkpoints["db4"], PROMPTS)[:1]
    assert s3_server.log.read_text().count("fetched adapter acme-late") == 2


def test_store_down_or_stalled_cached_adapters_keep_serving_others_503(s3, s3_server, expected, checkpoints):
    client = s3_server.client(api_key=KEYS["admin"])
    assert _request(s3_server, "/v1/selora/adapters/shared-fourier/unload", {})[0] == 200  # on disk only now
    s3.proxy.set_mode("refuse")
    try:
        assert complete(client, "acme-haar", PROMPTS[:1]) == expected(checkpoints["haar"], PROMPTS)[:1]  # loaded
        assert _complete(s3_server, "acme-local")[0] == 200
        start = time.monotonic()
        status, body = _complete(s3_server, "beta-db4")
        assert status == 503 and time.monotonic() - start < 30, body
        message = body["error"]["message"]
        assert f"the adapter store {URL} is unavailable" in message and "try again later" in message, body
        assert "127.0.0.1" not in message
        # In the local cache, not loaded: served from the cached copy while the store is down.
        assert complete(client, "shared-fourier", PROMPTS[:1]) == expected(checkpoints["fourier"], PROMPTS)[:1]
        s3.proxy.set_mode("stall")
        start = time.monotonic()
        status, body = _complete(s3_server, "beta-db4")
        assert status == 503 and time.monotonic() - start < 30, body
        assert _request(s3_server, "/v1/selora/adapters/beta-db4/load", {})[0] == 503
        with urllib.request.urlopen(f"{s3_server.url}/health", timeout=30) as resp:
            assert resp.status == 200
        assert _request(s3_server, "/v1/models")[0] == 200
        assert _request(s3_server, "/v1/selora/adapters")[0] == 200
    finally:
        s3.proxy.set_mode("pass")
    assert complete(client, "beta-db4", PROMPTS[:1]) == expected(checkpoints["db4"], PROMPTS)[:1]


def test_a_restarted_server_serves_its_cache_without_fetching_even_with_the_store_down(s3, s3_server, expected,
                                                                                      checkpoints):
    stop_server(s3_server)
    s3.proxy.set_mode("refuse")
    try:
        srv = start_server(s3_server.args, s3_server.root / "restarted.log", env=s3_server.env)
        try:
            client = srv.client(api_key=KEYS["admin"])
            assert complete(client, "acme-haar", PROMPTS[:1]) == expected(checkpoints["haar"], PROMPTS)[:1]
            assert complete(client, "acme-dense", PROMPTS[:1]) == expected(checkpoints["db4"], PROMPTS)[:1]
            assert _request(srv, "/v1/completions", {"model": "acme-nope", "prompt": "x", "max_tokens": 1})[0] == 503
            assert "cannot be reached now" in srv.log.read_text()
            assert Scrape(srv).total("selora_adapter_fetch_bytes_total") == 0
        finally:
            stop_server(srv)
    finally:
        s3.proxy.set_mode("pass")
