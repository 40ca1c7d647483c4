"""The host cache's byte bound (host_cache.bounded_manager_class) on vLLM's own LRU cache class:
least recently used evicted first, through vLLM's removal; slots, pins and the newcomer kept."""

import pytest

pytest.importorskip("vllm")

from selora_serve.vllm_ext import host_cache  # noqa: E402


class _Lora:
    def __init__(self, lora_id: int, nbytes: int):
        self.id = lora_id
        self._selora_bytes = nbytes  # what metrics.weight_bytes reports for it


class _Manager:
    """The parts of vLLM's LRUCacheLoRAModelManager the bound uses, on vLLM's AdapterLRUCache."""

    def __init__(self, slots: int = 2):
        from vllm.lora.model_manager import AdapterLRUCache

        self.deactivated: list[int] = []
        self._registered_adapters = AdapterLRUCache(1000, self.deactivated.append)
        self._active_adapters = AdapterLRUCache(slots, lambda _: None)

    def add_adapter(self, lora) -> bool:
        if lora.id in self._registered_adapters:
            self._registered_adapters.touch(lora.id)
            return False
        self._registered_adapters[lora.id] = lora
        return True


def _bounded(budget: int) -> _Manager:
    return host_cache.bounded_manager_class(_Manager, budget)()


def test_evicts_least_recently_used_until_under_budget():
    m = _bounded(300)
    for i in range(1, 4):
        assert m.add_adapter(_Lora(i, 100))
    assert list(m._registered_adapters.order) == [1, 2, 3] and m.deactivated == []
    m.add_adapter(_Lora(1, 100))  # a touch: 1 becomes the most recent, nothing added
    m.add_adapter(_Lora(4, 150))  # 450 > 300: 2 then 3 go (least recently used first)
    assert list(m._registered_adapters.order) == [1, 4] and m.deactivated == [2, 3]


def test_keeps_adapters_in_slots_pinned_ones_and_the_newcomer():
    m = _bounded(100)
    for i in (1, 2, 3):
        m.add_adapter(_Lora(i, 60))
    assert list(m._registered_adapters.order) == [3]
    m._active_adapters[3] = None  # 3 holds a slot
    m.add_adapter(_Lora(4, 60))
    m._registered_adapters.pin(4)
    m.add_adapter(_Lora(5, 500))  # larger than the whole budget: still served
    assert list(m._registered_adapters.order) == [3, 4, 5]


def test_host_cache_bytes_setting():
    assert host_cache.host_cache_bytes({}) is None
    assert host_cache.host_cache_bytes({host_cache.ENV_HOST_CACHE_BYTES: "1048576"}) == 1 << 20
    for bad in ("0", "2G", "-5"):
        with pytest.raises(ValueError, match="SELORA_HOST_CACHE_BYTES"):
            host_cache.host_cache_bytes({host_cache.ENV_HOST_CACHE_BYTES: bad})
