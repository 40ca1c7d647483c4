"""Adapter store roots in object storage, against a real S3-protocol server (moto, on loopback):
listing and finding like a local store, fetching into the cache by ETag, and each fault (store
down, stalled, object replaced, deleted, truncated) mapped to its answer."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from selora_serve.base_model import BaseFacts, load_config
from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE
from selora_serve.convert import to_peft
from selora_serve.store.cache import AdapterCache
from selora_serve.store.s3 import ObjectChanged, S3Root, StoreUnavailable, allow_http, cached_copy
from selora_serve.store.checkout import verified_snapshot
from selora_serve.store import AdapterError, AdapterStore


@pytest.fixture
def layout(s3, bucket, checkpoints, tmp_path):
    """prod/{haar, db4, dense (PEFT), team/fourier, notes (no adapter), .hidden}."""
    s3.upload_dir(bucket, "prod/haar", checkpoints["haar"])
    s3.upload_dir(bucket, "prod/db4", checkpoints["db4"])
    s3.upload_dir(bucket, "prod/team/fourier", checkpoints["fourier"])
    s3.upload_dir(bucket, "prod/dense", to_peft(checkpoints["haar"], tmp_path / "dense"))
    s3.upload_dir(bucket, "prod/.hidden", checkpoints["haar"])
    s3.put(bucket, "prod/notes/readme.txt", b"not an adapter")
    s3.put(bucket, "prod/haar/extra/selora_config.json", b"{}")  # inside an adapter: not one
    return f"s3://{bucket}/prod"


def test_listing_and_find_mirror_a_local_store(layout, checkpoints):
    root = S3Root(layout)
    assert sorted(root.adapters()) == ["db4", "dense", "haar", "team/fourier"]
    found = root.find("haar")
    assert found.kind == "selora" and [f.name for f in found.files] == [COEF_FILE, CONFIG_FILE]
    assert found.nbytes == sum((checkpoints["haar"] / f).stat().st_size for f in (COEF_FILE, CONFIG_FILE))
    assert root.find("dense").kind == "peft" and root.find("team/fourier").kind == "selora"
    assert root.find("missing") is None and root.find("notes") is None and root.find("team") is None
    assert root.check() is None


def test_fetch_into_the_cache_once_then_snapshot_verified(layout, checkpoints, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SELORA_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    cache = AdapterCache(tmp_path / "cache", 1 << 30)
    store = AdapterStore([layout], cache)
    facts = BaseFacts.of(load_config(tiny_model))
    found = store.find("haar")
    with cached_copy(found, cache) as (local, fetched):
        assert fetched.nbytes == found.nbytes and fetched.seconds > 0
        assert (local.path / COEF_FILE).read_bytes() == (checkpoints["haar"] / COEF_FILE).read_bytes()
    with cached_copy(store.find("haar"), cache) as (_, fetched):
        assert fetched.nbytes == 0, "the same ETags are a cache hit"
    snap = verified_snapshot(store.find("haar"), facts, cache=cache)
    assert (snap / CONFIG_FILE).read_bytes() == (checkpoints["haar"] / CONFIG_FILE).read_bytes()
    assert (snap / ".selora-verified").read_text() == facts.fingerprint
    entry = cache.path(found.key)
    assert os.stat(snap / COEF_FILE).st_ino == os.stat(entry / COEF_FILE).st_ino, "linked, not copied"
    cache.max_bytes = 0
    assert found.key in cache.evict()
    assert (snap / COEF_FILE).read_bytes() == (checkpoints["haar"] / COEF_FILE).read_bytes(), "outlives eviction"
    peft = verified_snapshot(store.find("dense"), facts, cache=cache)
    assert (peft / "adapter_config.json").is_file()


def test_a_replaced_object_is_a_new_version_fetched_again(s3, bucket, layout, checkpoints, tmp_path):
    cache = AdapterCache(tmp_path / "cache", 1 << 30)
    old = S3Root(layout).find("haar")
    with cached_copy(old, cache):
        pass
    s3.upload_dir(bucket, "prod/haar", checkpoints["db4"])
    new = S3Root(layout).find("haar")
    assert new.key != old.key
    with cached_copy(new, cache) as (local, fetched):
        assert fetched.nbytes == new.nbytes
        assert (local.path / COEF_FILE).read_bytes() == (checkpoints["db4"] / COEF_FILE).read_bytes()


def test_replaced_between_list_and_get_lists_again_and_deleted_is_not_found(s3, bucket, layout, checkpoints, tmp_path):
    cache = AdapterCache(tmp_path / "cache", 1 << 30)
    root = S3Root(layout)
    listed = root.find("db4")
    s3.put(bucket, "prod/db4/" + COEF_FILE, (checkpoints["haar"] / COEF_FILE).read_bytes())
    with pytest.raises(ObjectChanged):
        root.fetch(listed, tmp_path)
    with cached_copy(listed, cache) as (local, _):  # lists again, fetches the new object
        assert (local.path / COEF_FILE).read_bytes() == (checkpoints["haar"] / COEF_FILE).read_bytes()
    listed = root.find("team/fourier")
    s3.delete(bucket, "prod/team/fourier/" + COEF_FILE)
    s3.delete(bucket, "prod/team/fourier/" + CONFIG_FILE)
    with pytest.raises(FileNotFoundError):
        with cached_copy(listed, cache):
            pass


def test_truncated_object_is_a_400_for_that_adapter(s3, bucket, layout, checkpoints, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SELORA_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    data = (checkpoints["haar"] / COEF_FILE).read_bytes()
    s3.put(bucket, "prod/cut/" + COEF_FILE, data[: len(data) // 2])
    s3.put(bucket, "prod/cut/" + CONFIG_FILE, (checkpoints["haar"] / CONFIG_FILE).read_bytes())
    store = AdapterStore([layout], AdapterCache(tmp_path / "cache", 1 << 30))
    with pytest.raises(AdapterError, match="'cut'.*corrupt or truncated") as info:
        verified_snapshot(store.find("cut"), load_config(tiny_model), cache=store.cache)
    assert info.value.status == 400


def test_store_down_uncached_is_503_cached_is_served(s3, layout, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SELORA_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("SELORA_ADAPTER_FETCH_TIMEOUT", "3")
    store = AdapterStore([layout], AdapterCache(tmp_path / "cache", 1 << 30))
    base = load_config(tiny_model)
    verified_snapshot(store.find("haar"), base, cache=store.cache)
    store.adapters()
    s3.proxy.set_mode("refuse")
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.find("db4")
    assert time.monotonic() - start < 10
    assert info.value.status == 503 and "s3://" in str(info.value) and "try again later" in str(info.value)
    assert "127.0.0.1" not in str(info.value), "clients are not told the endpoint"
    stale = store.find("haar")
    assert stale.cached_key is not None
    assert verified_snapshot(stale, base, cache=store.cache).is_dir()
    assert "haar" in store.adapters(), "listings fall back to the last one"


def test_a_stalled_store_times_out(s3, layout, tmp_path, monkeypatch):
    monkeypatch.setenv("SELORA_ADAPTER_FETCH_TIMEOUT", "1")
    root = S3Root(layout)
    found = root.find("haar")
    s3.proxy.set_mode("stall")
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="timed out"):
        root.fetch(found, tmp_path)
    assert time.monotonic() - start < 8


def test_mixed_roots_first_wins_and_env_round_trip(layout, checkpoints, tmp_path):
    local = tmp_path / "local"
    shutil.copytree(checkpoints["fourier"], local / "haar")
    store = AdapterStore([str(local), layout], AdapterCache(tmp_path / "cache", 1 << 30))
    assert store.find("haar").path == (local / "haar").resolve()
    assert store.find("db4").url == layout + "/db4"
    assert set(store.names()) == {"haar", "db4", "dense", "team/fourier"}
    again = AdapterStore.from_env({"SELORA_ADAPTER_DIRS": store.to_env()})
    assert again.roots == store.roots
    assert store.max_rank() == 8


def test_selora_serve_plan_with_a_bucket(s3, bucket, layout, tiny_model, tmp_path):
    from selora_serve.serve.plan import plan_store

    launch = plan_store(str(tiny_model), [layout], cpu=True, cache_dir=tmp_path / "cache", cache_bytes="1G")
    assert launch.env["SELORA_ADAPTER_CACHE_BYTES"] == str(1 << 30)
    assert launch.env["SELORA_ADAPTER_CACHE_DIR"] == str((tmp_path / "cache").resolve())
    assert AdapterStore.from_env(launch.env).roots == (S3Root(layout),)
    assert "--max-lora-rank" in launch.argv and launch.argv[launch.argv.index("--max-lora-rank") + 1] == "8"
    with pytest.raises(ValueError, match="s3://no-such-bucket.*no such bucket; check the bucket name"):
        plan_store(str(tiny_model), ["s3://no-such-bucket/x"], cpu=True, cache_dir=tmp_path / "cache")
    s3.proxy.set_mode("refuse")
    launch = plan_store(str(tiny_model), [layout], cpu=True, cache_dir=tmp_path / "cache")
    assert any("cannot be reached now" in n and "--max-lora-rank" in n for n in launch.notes), launch.notes
    with pytest.raises(ValueError, match="apply to adapters in object storage"):
        plan_store(str(tiny_model), [str(tmp_path)], cpu=True, cache_dir=tmp_path / "cache")


def test_urls_and_plain_http(monkeypatch):
    for bad, why in [("s3://", "expected s3://BUCKET/PREFIX"), ("s3://A_B/x", "not a valid S3 bucket name"),
                     ("s3://bucket/a/../b", "refused")]:
        with pytest.raises(ValueError, match=why):
            S3Root(bad)
    assert S3Root("s3://bucket/a/b/").url == "s3://bucket/a/b" and S3Root("s3://bucket").url == "s3://bucket"
    assert allow_http("http://127.0.0.1:9000", {}) and allow_http("http://localhost:9000", {})
    assert not allow_http("http://minio.internal:9000", {}) and not allow_http("https://s3.amazonaws.com", {})
    assert allow_http("http://minio.internal:9000", {"AWS_ALLOW_HTTP": "true"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    with pytest.raises(ValueError, match="set AWS_ALLOW_HTTP=true"):
        S3Root("s3://bucket/x").client()
