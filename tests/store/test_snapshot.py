"""Snapshots: the private, verified copy the engine loads; one read of the source, checks on those
bytes, nothing half-made left behind, and the verified mark the worker trusts."""

from __future__ import annotations

import shutil

import pytest

from selora_serve.base_model import load_config
from selora_serve.checkpoint import COEF_FILE
from selora_serve.store.snapshot import is_verified, mark_verified, snapshot
from selora_serve.store import AdapterError, AdapterStore


def test_worker_skips_value_checks_only_for_a_snapshot_verified_for_its_base(checkpoints, tiny_model, tmp_path):
    """The worker decodes inside the engine loop: it trusts a snapshot the API process verified
    and marked for the same base model, and verifies anything else in full."""
    import torch
    from safetensors.torch import load_file, save_file

    from selora_serve.base_model import BaseFacts
    from selora_serve.checkpoint import CheckpointError
    from selora_serve.peft_io import dense_state_dict
    from selora_serve.vllm_ext.loading import load_verified

    facts = BaseFacts.of(load_config(tiny_model))
    modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    def decode_tensors(path, facts, modules):  # what the worker loads and decodes
        return dense_state_dict(load_verified(path, facts, modules)[0])
    good = snapshot(AdapterStore([checkpoints["haar"].parent]).find("haar"), tmp_path / "snapshots")
    want = decode_tensors(str(good), facts, modules)
    assert not is_verified(good, facts.fingerprint)
    mark_verified(good, facts.fingerprint)
    assert is_verified(good, facts.fingerprint) and not is_verified(good, "0" * 64)
    got = decode_tensors(str(good), facts, modules)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    bad = shutil.copytree(checkpoints["haar"], tmp_path / "bad")
    tensors = load_file(str(bad / COEF_FILE))
    key = next(k for k in tensors if k.endswith("coef_a"))
    tensors[key][0] = float("nan")
    save_file(tensors, str(bad / COEF_FILE))
    mark_verified(bad, "0" * 64)  # verified for another base: no trust
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        decode_tensors(str(bad), facts, modules)
    mark_verified(bad, facts.fingerprint)  # what the resolver writes only after `validate`
    assert decode_tensors(str(bad), facts, modules)


def test_snapshot_validates_in_the_pass_that_copies(checkpoints, tiny_model, tmp_path, monkeypatch):
    """One read of the source: the checks run on the bytes the copy read (nothing re-reads the
    coefficients), a failing adapter leaves no snapshot behind, and the same bytes snapshotted
    again reuse the verified copy without validating again."""
    import pathlib

    from selora_serve.base_model import BaseFacts

    facts = BaseFacts.of(load_config(tiny_model))
    store = AdapterStore([checkpoints["haar"].parent])
    read_bytes = pathlib.Path.read_bytes

    def no_reread(self):
        assert self.name != COEF_FILE, f"{self} read again"
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", no_reread)
    timings: dict = {}
    snap = snapshot(store.find("haar"), tmp_path / "snaps", base=facts, timings=timings)
    assert is_verified(snap, facts.fingerprint) and timings["verify"] > 0 and timings["copy"] > 0
    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    assert (snap / COEF_FILE).read_bytes() == (checkpoints["haar"] / COEF_FILE).read_bytes()
    again: dict = {}
    assert snapshot(store.find("haar"), tmp_path / "snaps", base=facts, timings=again) == snap
    assert again["verify"] == 0, "verified before: not validated again"

    bad = shutil.copytree(checkpoints["haar"], tmp_path / "store" / "bad")
    data = (bad / COEF_FILE).read_bytes()
    (bad / COEF_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="'bad'.*corrupt or truncated"):
        snapshot(AdapterStore([tmp_path / "store"]).find("bad"), tmp_path / "snaps", base=facts)
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(checkpoints["haar"] / COEF_FILE))
    tensors[next(iter(tensors))][3] = float("inf")
    save_file(tensors, str(bad / COEF_FILE))
    with pytest.raises(AdapterError, match=r"'bad'.*coef_[ab]: 1 NaN/Inf value\(s\)"):
        snapshot(AdapterStore([tmp_path / "store"]).find("bad"), tmp_path / "snaps", base=facts)
    tensors[next(iter(tensors))] = tensors[next(iter(tensors))].to(torch.float16)
    save_file(tensors, str(bad / COEF_FILE))
    with pytest.raises(AdapterError, match="dtype float16, manifest says float32"):
        snapshot(AdapterStore([tmp_path / "store"]).find("bad"), tmp_path / "snaps", base=facts)
    (bad / COEF_FILE).unlink()
    with pytest.raises(AdapterError, match="selora_coefficients.safetensors: \\(file\\): missing"):
        snapshot(AdapterStore([tmp_path / "store"]).find("bad"), tmp_path / "snaps", base=facts)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [snap.name], "nothing half-made is left"
    with pytest.raises(AdapterError, match="exceeds the server's max LoRA rank 1"):
        snapshot(store.find("haar"), tmp_path / "other", base=facts, max_rank=1)


def _linked_store(checkpoints, tmp_path):
    """A store of its own (the session's checkpoints must not be linked into tests that write)."""
    root = tmp_path / "store"
    shutil.copytree(checkpoints["haar"], root / "haar")
    return AdapterStore([root]), root / "haar"


def test_a_local_selora_snapshot_links_the_files_it_read(checkpoints, tiny_model, tmp_path):
    """No private copy: the snapshot's files are the store's inodes, their identity recorded;
    an atomic replacement in the store leaves the snapshot's bytes as they were (the old inode's
    ctime moves as its link count drops, so the worker then validates in full: conservative)."""
    from selora_serve.vllm_ext.loading import load_verified

    import json
    import os

    from selora_serve.base_model import BaseFacts
    from selora_serve.checkpoint import CONFIG_FILE
    from selora_serve.store.snapshot import LINKED_MARK, intact

    facts = BaseFacts.of(load_config(tiny_model))
    store, source = _linked_store(checkpoints, tmp_path)
    snap = snapshot(store.find("haar"), tmp_path / "snaps", base=facts)
    for name in (CONFIG_FILE, COEF_FILE):
        assert os.stat(snap / name).st_ino == os.stat(source / name).st_ino
    recorded = json.loads((snap / LINKED_MARK).read_text())
    assert sorted(recorded) == sorted([CONFIG_FILE, COEF_FILE]) and intact(snap)
    before = (snap / COEF_FILE).read_bytes()
    replacement = tmp_path / "new.safetensors"
    replacement.write_bytes(b"not the adapter")
    os.replace(replacement, source / COEF_FILE)  # how every writer here replaces a file
    assert (snap / COEF_FILE).read_bytes() == before and not intact(snap)
    modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert load_verified(str(snap), facts, modules)[1] is False  # validated in full, and it passes


def test_a_linked_file_rewritten_in_place_is_validated_in_full_by_the_worker(checkpoints, tiny_model, tmp_path):
    import torch
    from safetensors.torch import load, save

    from selora_serve.base_model import BaseFacts
    from selora_serve.checkpoint import CheckpointError
    from selora_serve.store.snapshot import intact
    from selora_serve.vllm_ext.loading import load_verified

    facts = BaseFacts.of(load_config(tiny_model))
    modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    store, source = _linked_store(checkpoints, tmp_path)
    snap = snapshot(store.find("haar"), tmp_path / "snaps", base=facts)
    assert load_verified(str(snap), facts, modules)[1] is True, "verified and intact: trusted"
    tensors = load((source / COEF_FILE).read_bytes())
    key = next(k for k in tensors if k.endswith("coef_a"))
    tensors[key][0] = float("nan")
    data = save(tensors)
    with open(source / COEF_FILE, "r+b") as fh:  # in place: the snapshot's inode changes too
        fh.write(data)
        fh.truncate()
    assert not intact(snap)
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        load_verified(str(snap), facts, modules)
    assert torch.isnan(load((snap / COEF_FILE).read_bytes())[key][0])


def test_snapshot_copies_where_it_cannot_link(checkpoints, tiny_model, tmp_path, monkeypatch):
    """Another file system (EXDEV), or a file written while it was read: a private copy of the
    bytes that were read and validated, nothing recorded to re-check."""
    import errno
    import os

    from selora_serve.base_model import BaseFacts
    from selora_serve.store import snapshot as snapshot_module
    from selora_serve.store.snapshot import LINKED_MARK, _link_read_file, intact

    facts = BaseFacts.of(load_config(tiny_model))
    store, source = _linked_store(checkpoints, tmp_path)

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(snapshot_module.os, "link", cross_device)
    snap = snapshot(store.find("haar"), tmp_path / "snaps", base=facts)
    assert os.stat(snap / COEF_FILE).st_ino != os.stat(source / COEF_FILE).st_ino
    assert not (snap / LINKED_MARK).exists() and intact(snap) and is_verified(snap, facts.fingerprint)
    assert (snap / COEF_FILE).read_bytes() == (source / COEF_FILE).read_bytes()
    monkeypatch.undo()

    growing = tmp_path / "growing"
    growing.write_bytes(b"12345")
    with open(growing, "rb") as src:
        read_as = snapshot_module._identity(os.fstat(src.fileno()))
        src.read()
        with open(growing, "ab") as writer:  # written after it was read
            writer.write(b"678")
        assert _link_read_file(src, read_as, tmp_path / "linked", "growing", os.open(tmp_path, os.O_RDONLY)) is None
    assert not (tmp_path / "linked").exists()
