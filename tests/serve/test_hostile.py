"""Hostile input to the shared server: each case answers a clear 4xx and every other adapter keeps
working. (Corrupt JSON, truncated safetensors, another base model and names leaving the store
are in test_server.py.) Broken adapters are copied into the store after start-up."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE
from selora_serve.config import SeLoRAConfig

from .conftest import HOST_CACHE, SLOTS
from .test_server import PROMPTS, _copy_in, _error, _post, complete

pytestmark = pytest.mark.vllm


def _edit_json(ckpt, edit):
    data = json.loads((ckpt / CONFIG_FILE).read_text())
    edit(data)
    (ckpt / CONFIG_FILE).write_text(json.dumps(data))


def _huge(ckpt):
    _edit_json(ckpt, lambda d: next(iter(d["modules"].values())).update(in_features=10**12))


def _nan(ckpt):
    tensors = load_file(str(ckpt / COEF_FILE))
    key = next(iter(tensors))
    tensors[key][0] = float("nan")
    tensors[key][-1] = float("inf")
    save_file(tensors, str(ckpt / COEF_FILE))


def _garbage(ckpt):
    (ckpt / COEF_FILE).write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy().tobytes())


@pytest.mark.parametrize("name, damage, reason", [
    ("hostile-huge", _huge, "features must be integers in [1, 1048576]"),
    ("hostile-nan", _nan, "NaN/Inf value(s)"),
    ("hostile-garbage", _garbage, "corrupt or truncated safetensors"),
])
def test_damaged_adapter_added_at_run_time_is_4xx(server, expected, checkpoints, tmp_path, name, damage, reason):
    shutil.copytree(checkpoints["haar"], tmp_path / name)
    damage(tmp_path / name)
    _copy_in(tmp_path / name, server.store, name)
    status, err = _error(server, name)
    assert status == 400 and f"'{name}'" in err["message"] and reason in err["message"], err
    assert complete(server.client(), "db4", PROMPTS[:1]) == expected(server.store / "db4", PROMPTS)[:1]


def test_rank_above_the_servers_slots_is_4xx_naming_rank(server, expected, tiny_model, tmp_path):
    from selora_serve.convert import init_checkpoint

    config = SeLoRAConfig(r=16, alpha=32, eta=0.6, seed=3, basis="wavelet", wavelet="haar")
    init_checkpoint(tiny_model, tmp_path / "r16", config, random_b=True, init_seed=7)
    _copy_in(tmp_path / "r16", server.store, "hostile-r16")
    status, err = _error(server, "hostile-r16")
    assert status == 400 and "rank r=16 exceeds the server's max LoRA rank 8" in err["message"], err
    assert complete(server.client(), "haar", PROMPTS[:1]) == expected(server.store / "haar", PROMPTS)[:1]


def _replace(store, name, src):
    """Swap store/name for a copy of src by rename, as a deployment replaces an adapter."""
    shutil.copytree(src, store / f".{name}.new")
    if (store / name).exists():
        (store / name).rename(store / f".{name}.old")
    (store / f".{name}.new").rename(store / name)
    shutil.rmtree(store / f".{name}.old", ignore_errors=True)


def _evict(server, names):
    """Requests through more other adapters than the host cache holds."""
    for name in names:
        complete(server.client(), name, PROMPTS[:1])


def test_adapter_replaced_or_deleted_on_disk_while_cached(server, expected, checkpoints, tmp_path):
    store, client = server.store, server.client()
    want = {k: expected(checkpoints[k], PROMPTS)[:1] for k in ("haar", "db4")}
    fillers = [f"filler-{i}" for i in range(HOST_CACHE)]
    for name in fillers:
        if not (store / name).exists():
            _copy_in(checkpoints["fourier"], store, name)

    _replace(store, "swap", checkpoints["haar"])
    assert complete(client, "swap", PROMPTS[:1]) == want["haar"]
    # Replaced, then deleted, while vLLM holds it: it keeps serving the copy it validated, even
    # after its host cache evicted it and the worker loaded it again.
    _replace(store, "swap", checkpoints["db4"])
    assert complete(client, "swap", PROMPTS[:1]) == want["haar"]
    shutil.rmtree(store / "swap")
    _evict(server, fillers)
    assert complete(client, "swap", PROMPTS[:1]) == want["haar"]
    # Unloaded: the next load sees the store as it is now.
    assert _post(server, "/v1/selora/adapters/swap/unload", {})[0] == 200
    assert _error(server, "swap")[0] == 404
    _replace(store, "swap", checkpoints["db4"])
    assert complete(client, "swap", PROMPTS[:1]) == want["db4"]
    # Replaced by a corrupt file: a clean 4xx after unload, never a mix, others unharmed.
    _replace(store, "swap", server.store / "truncated")
    assert complete(client, "swap", PROMPTS[:1]) == want["db4"]
    assert _post(server, "/v1/selora/adapters/swap/unload", {})[0] == 200
    status, err = _error(server, "swap")
    assert status == 400 and "corrupt or truncated" in err["message"], err
    assert complete(client, "haar", PROMPTS[:1]) == want["haar"]


def test_concurrent_load_unload_and_generate_of_one_adapter(server, expected, checkpoints):
    import httpx

    _replace(server.store, "churn", checkpoints["db4"])
    want = expected(checkpoints["db4"], PROMPTS)[0]

    async def run():
        aclient = server.async_client()
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            async def admin(op):
                return (await http.post(f"/v1/selora/adapters/churn/{op}")).status_code

            async def generate():
                try:
                    choice = (await aclient.completions.create(model="churn", prompt=PROMPTS[0], max_tokens=4,
                                                               temperature=0, extra_body={"return_token_ids": True})).choices[0]
                    assert list(choice.model_extra["token_ids"]) == want[:4]
                    return 200
                except Exception as exc:  # an APIStatusError is a result; anything else fails below
                    return getattr(exc, "status_code", repr(exc))

            ops = [admin("load"), generate(), admin("unload"), generate(), admin("load"), admin("unload"),
                   generate(), admin("pin"), admin("unpin"), generate()] * 3
            return await asyncio.gather(*ops)

    statuses = asyncio.run(run())
    assert all(isinstance(s, int) and (200 <= s < 300 or 400 <= s < 500) for s in statuses), statuses
    assert statuses.count(200) >= 3
    assert complete(server.client(), "churn", PROMPTS[:1]) == [want]
    assert complete(server.client(), "haar", PROMPTS[:1]) == expected(server.store / "haar", PROMPTS)[:1]


def test_pins_leave_one_slot_free(server):
    limit = SLOTS - 1  # the start-up --pin holds one of them already
    pinned = [a["name"] for a in json.loads(_post_get(server))["data"] if a["state"]["pinned"]]
    candidates = [n for n in ("haar", "db4", "late-0", "churn") if n not in pinned]
    statuses = [_post(server, f"/v1/selora/adapters/{n}/pin", {})[0] for n in candidates[: limit - len(pinned) + 1]]
    assert statuses[:-1] == [200] * (len(statuses) - 1) and statuses[-1] == 409
    assert "one LoRA slot stays free" in _post(server, f"/v1/selora/adapters/{candidates[-1]}/pin", {})[1]
    for name in candidates[: len(statuses) - 1]:
        assert _post(server, f"/v1/selora/adapters/{name}/unpin", {})[0] == 200


def _post_get(server):
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/v1/selora/adapters", timeout=60) as resp:
        return resp.read()


def test_oversized_and_malformed_bodies(server, expected):
    import httpx

    big = {"model": "haar", "prompt": "x" * (2 << 20), "max_tokens": 1}
    resp = httpx.post(f"{server.url}/v1/completions", json=big, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413
    for body, needle in [(b"{not json", "not valid JSON"), (b'["a"]', "JSON object"),
                         (b'{"model": "haar", "model": "db4", "prompt": "x"}', "duplicated key")]:
        resp = httpx.post(f"{server.url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and needle in resp.json()["error"]["message"], resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    # A body streamed without Content-Length is cut off at the limit too.
    chunks = (b"x" * (256 << 10) for _ in range(8))
    resp = httpx.post(f"{server.url}/v1/completions", content=chunks, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert complete(server.client(), "haar", PROMPTS[:1]) == expected(server.store / "haar", PROMPTS)[:1]
