"""The residency metrics' wrapper of vLLM's per-step add_adapter: no O(host cache) snapshot when
the adapter is already registered and in a slot, the full before/after record otherwise."""

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from selora_serve.vllm_ext import metrics  # noqa: E402


def test_add_adapter_of_an_adapter_in_its_slot_takes_no_snapshot(monkeypatch):
    snapshots = []
    monkeypatch.setattr(metrics, "_snapshot", lambda wm: snapshots.append(wm) or ({}, frozenset()))
    monkeypatch.setattr(metrics, "_record", lambda *a: None)
    calls = []
    wrapped = metrics._observed(lambda self, req: calls.append(req.lora_int_id) or True, True, fast_path=True)
    worker = SimpleNamespace(_adapter_manager=SimpleNamespace(lora_index_to_id=[7, None], _registered_adapters={7: 1, 9: 1}))
    assert wrapped(worker, SimpleNamespace(lora_int_id=7, load_inplace=False))
    assert calls == [7] and snapshots == []  # in its slot: nothing can change
    for request in (SimpleNamespace(lora_int_id=9, load_inplace=False),   # registered, not in a slot
                    SimpleNamespace(lora_int_id=11, load_inplace=False),  # not registered
                    SimpleNamespace(lora_int_id=7, load_inplace=True)):   # reloaded in place
        before = len(snapshots)
        wrapped(worker, request)
        assert len(snapshots) == before + 2
    plain = metrics._observed(lambda self, req: True, True)
    plain(worker, SimpleNamespace(lora_int_id=7, load_inplace=False))
    assert len(snapshots) == 8, "without the fast path every call is recorded"
