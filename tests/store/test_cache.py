"""The byte-bounded adapter cache: one fetch per key across threads and processes, nothing half
written, LRU eviction by bytes that never removes an entry being read, state kept across restarts."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from selora_serve.store.cache import META, AdapterCache, parse_size


def _writer(payload: bytes, log: Path | None = None, delay: float = 0.0):
    def fetch(tmp: Path) -> dict:
        if log is not None:
            with open(log, "a") as fh:
                fh.write("fetch\n")
        time.sleep(delay)
        (tmp / "data.bin").write_bytes(payload)
        return {"url": "s3://b/p/x"}
    return fetch


def test_fill_once_then_hit_and_survive_a_restart(tmp_path):
    cache = AdapterCache(tmp_path / "c", max_bytes=1 << 20)
    log = tmp_path / "log"
    with cache.entry("k1", _writer(b"abc", log)) as path:
        assert (path / "data.bin").read_bytes() == b"abc" and (path / META).is_file()
    with cache.entry("k1", _writer(b"other", log)) as path:
        assert (path / "data.bin").read_bytes() == b"abc"
    again = AdapterCache(tmp_path / "c", max_bytes=1 << 20)  # a restarted server
    with again.entry("k1") as path:
        assert (path / "data.bin").read_bytes() == b"abc"
    assert log.read_text().count("fetch") == 1
    assert again.entries()[0][:2] == ("k1", 3) and again.total_bytes() == 3
    with pytest.raises(KeyError):
        with again.entry("absent"):
            pass


def test_a_failed_fetch_leaves_nothing(tmp_path):
    cache = AdapterCache(tmp_path / "c", max_bytes=1 << 20)

    def broken(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise ConnectionError("store went away")

    with pytest.raises(ConnectionError):
        with cache.entry("k", broken):
            pass
    assert not cache.has("k") and cache.entries() == []
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp")] == []


def test_concurrent_first_requests_in_threads_fetch_once(tmp_path):
    cache = AdapterCache(tmp_path / "c", max_bytes=1 << 20)
    log, seen = tmp_path / "log", []

    def request():
        with cache.entry("k", _writer(b"payload", log, delay=0.3)) as path:
            seen.append((path / "data.bin").read_bytes())

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [b"payload"] * 6 and log.read_text().count("fetch") == 1


def _process_request(root: str, log: str, out: str) -> None:
    cache = AdapterCache(root, max_bytes=1 << 20)
    with cache.entry("k", _writer(b"from-a-process", Path(log), delay=0.5)) as path:
        Path(out).write_bytes((path / "data.bin").read_bytes())


def test_concurrent_first_requests_in_processes_fetch_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    log = tmp_path / "log"
    procs = [ctx.Process(target=_process_request, args=(str(tmp_path / "c"), str(log), str(tmp_path / f"out{i}")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text().count("fetch") == 1
    assert all((tmp_path / f"out{i}").read_bytes() == b"from-a-process" for i in range(3))


def test_lru_eviction_by_bytes_spares_entries_being_read(tmp_path):
    cache = AdapterCache(tmp_path / "c", max_bytes=250)
    for key in ("a", "b", "c"):
        with cache.entry(key, _writer(b"x" * 100)):
            pass
        time.sleep(0.02)  # distinct modification times
    with cache.entry("a"):  # used again: now the most recent
        pass
    assert cache.evict() == ["b"]
    assert sorted(k for k, _, _ in cache.entries()) == ["a", "c"]
    cache.max_bytes = 50
    with cache.entry("c"):  # being read: survives the eviction that removes everything else
        assert cache.evict() == ["a"]
    assert cache.evict() == ["c"] and cache.total_bytes() == 0


def test_an_entry_larger_than_the_budget_is_served_once_then_evicted(tmp_path):
    cache = AdapterCache(tmp_path / "c", max_bytes=10)
    with cache.entry("big", _writer(b"y" * 100)) as path:
        assert (path / "data.bin").stat().st_size == 100
        assert cache.evict() == []
    assert cache.evict() == ["big"]


def test_a_killed_fetch_is_cleaned_up_only_when_its_key_is_free(tmp_path):
    from selora_serve.store.cache import _flock, _release

    cache = AdapterCache(tmp_path / "c", max_bytes=1 << 20)
    stale = tmp_path / "c" / ".tmp-dead-abc123"
    stale.mkdir()
    (stale / "data.bin").write_bytes(b"half")
    live = tmp_path / "c" / ".tmp-live-def456"
    live.mkdir()
    fd = _flock(tmp_path / "c" / "locks" / "live.lock", exclusive=True, deadline=None)  # a fetch in progress
    try:
        AdapterCache(tmp_path / "c", max_bytes=1 << 20)
        assert not stale.exists() and live.exists()
        assert not cache.has("dead")
    finally:
        _release(fd)


def test_last_version_of_a_url(tmp_path):
    cache = AdapterCache(tmp_path / "c", max_bytes=1 << 20)
    assert cache.last("s3://b/p/x") is None
    with cache.entry("k1", _writer(b"1")):
        cache.set_last_key("s3://b/p/x", "k1", kind="selora")
    assert cache.last("s3://b/p/x") == {"url": "s3://b/p/x", "key": "k1", "kind": "selora"}
    cache.max_bytes = 0
    cache.evict()
    assert cache.last("s3://b/p/x") is None, "a version no longer cached is not offered"


@pytest.mark.parametrize("text, value", [("1000", 1000), ("20G", 20 << 30), ("512MiB", 512 << 20), ("1.5K", 1536),
                                         (7, 7), ("0", 0)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-5", "G"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)
