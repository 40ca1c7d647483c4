"""checkout: name -> verified snapshot, as both front ends answer; snapshot directories' lifetime."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from selora_serve.base_model import BaseFacts, load_config
from selora_serve.checkpoint import COEF_FILE
from selora_serve.store import AdapterError, AdapterStore, StoreUnavailable
from selora_serve.store import checkout as co
from selora_serve.store.local import LocalRoot
from selora_serve.store.snapshot import is_verified


@pytest.fixture
def store(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv(co.ENV_SNAPSHOTS, str(tmp_path / "snaps"))
    root = tmp_path / "root"
    shutil.copytree(checkpoints["haar"], root / "haar")
    shutil.copytree(checkpoints["db4"], root / "bad")
    (root / "bad" / COEF_FILE).write_bytes((root / "bad" / COEF_FILE).read_bytes()[:-7])
    return AdapterStore([root])


def test_checkout_answers_unknown_bad_and_good(store, tiny_model):
    facts = BaseFacts.of(load_config(tiny_model))
    assert co.checkout(store, "missing", facts) is None
    with pytest.raises(AdapterError, match=r"adapter 'bad': selora_coefficients.safetensors") as bad:
        co.checkout(store, "bad", facts)
    assert bad.value.status == 400
    with pytest.raises(AdapterError, match="exceeds the server's max LoRA rank 4"):
        co.checkout(store, "haar", facts, max_rank=4)
    path = co.checkout(store, "haar", facts)
    assert path.parent == co.snapshot_root() and is_verified(path, facts.fingerprint)


def test_checkout_from_a_bucket_reports_the_fetch_and_503_when_down(s3, bucket, checkpoints, tiny_model, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv(co.ENV_SNAPSHOTS, str(tmp_path / "snaps"))
    monkeypatch.setenv("SELORA_ADAPTER_CACHE_DIR", str(tmp_path / "cache"))
    s3.upload_dir(bucket, "p/haar", checkpoints["haar"])
    store, facts, fetches = AdapterStore([f"s3://{bucket}/p"]), BaseFacts.of(load_config(tiny_model)), []
    size = sum(f.stat().st_size for f in checkpoints["haar"].iterdir() if f.is_file())
    before = s3.proxy.sent
    assert co.checkout(store, "haar", facts, on_fetch=lambda *a: fetches.append(a)).is_dir()
    first = s3.proxy.sent - before
    assert co.checkout(store, "haar", facts, on_fetch=lambda *a: fetches.append(a)).is_dir()
    assert [(name, n) for name, n, _ in fetches] == [("haar", size)], "fetched once, then the cache"
    assert size < first < size + 8192, "the proxy counts the bytes the bucket sent (objects + listings)"
    assert s3.proxy.sent - before - first < 8192, "a cache hit sends a listing, not the objects"
    s3.proxy.set_mode("refuse")
    with pytest.raises(StoreUnavailable) as down:
        co.checkout(AdapterStore([f"s3://{bucket}/p"]), "never-fetched", facts)
    assert down.value.status == 503


def test_local_root_refuses_links_out_and_lists_one_level(checkpoints, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(checkpoints["haar"], root / "team" / "a")
    (root / "out").symlink_to(checkpoints["db4"])
    local = LocalRoot(root)
    assert sorted(local.adapters()) == ["team/a"]
    with pytest.raises(AdapterError, match="outside the adapter store"):
        local.find("out")
    with pytest.raises(NotADirectoryError, match="adapter store directory not found"):
        LocalRoot(tmp_path / "nope")


def test_stale_snapshot_roots_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"{co.PREFIX}{int(dead.stdout)}-abc"
    mine = tmp_path / f"{co.PREFIX}{os.getpid()}-abc"
    parent = tmp_path / f"{co.PREFIX}{os.getppid()}-abc"  # a live process
    other = tmp_path / f"{co.PREFIX}notapid"
    for d in (gone, mine, parent, other):
        (d / "x").mkdir(parents=True)
    assert co.remove_stale(tmp_path) == [gone]
    assert not gone.exists() and mine.exists() and parent.exists() and other.exists()


def test_own_snapshot_root_is_named_by_pid_and_released(monkeypatch, tmp_path):
    monkeypatch.delenv(co.ENV_SNAPSHOTS, raising=False)
    monkeypatch.setattr(co.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(co, "_own_root", None)
    root = co.snapshot_root()
    assert root.parent == tmp_path and root.name.startswith(f"{co.PREFIX}{os.getpid()}-")
    co.release_snapshot_root()
    assert not root.exists() and co._own_root is None
