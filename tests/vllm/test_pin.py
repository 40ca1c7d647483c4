"""The vLLM pin: the installed release is the supported one, every hooked internal is as the
integration expects, and a change to any of them is reported by name."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

vllm = pytest.importorskip("vllm")

from selora_serve.pinning import check_hooks  # noqa: E402
from selora_serve.vllm_ext import pin  # noqa: E402


def test_installed_vllm_is_the_pinned_release():
    assert pin.version_matches(), (
        f"selora-serve's vLLM integration is pinned to {pin.SUPPORTED_VLLM} but vLLM "
        f"{vllm.__version__} is installed: re-check selora_serve/vllm_ext against it, then bump SUPPORTED_VLLM"
    )


def test_hooked_internals_are_unchanged():
    problems = check_hooks(pin.HOOKS)
    assert not problems, "vLLM internals hooked by selora_serve/vllm_ext changed:\n" + "\n".join(problems)


def test_a_changed_internal_is_reported_by_name(monkeypatch):
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.lora.worker_manager import WorkerLoRAManager

    monkeypatch.setattr(PEFTHelper, "from_local_dir", classmethod(lambda cls, path: None))
    monkeypatch.setattr(WorkerLoRAManager, "_load_adapter", lambda self, request: None)
    problems = check_hooks(pin.HOOKS)
    assert any("PEFTHelper.from_local_dir: parameters are ('cls', 'path')" in p for p in problems), problems
    assert any("_load_adapter: no longer contains 'PEFTHelper.from_local_dir('" in p for p in problems), problems
    with pytest.raises(RuntimeError, match="changed internals it hooks"):
        pin.require_hooks()


def test_plugin_is_registered_and_idempotent():
    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("selora") == "selora_serve.vllm_ext.plugin:register", (
        "the vllm.general_plugins entry point is missing: run `pip install -e . --no-deps`"
    )
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.lora.worker_manager import WorkerLoRAManager

    from selora_serve.vllm_ext import plugin

    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager as LRU
    from vllm.v1.engine.output_processor import OutputProcessor

    def patched():
        return (WorkerLoRAManager.__init__, PEFTHelper.__dict__["from_local_dir"].__func__,
                LRU.add_adapter, LRU.remove_adapter, OutputProcessor._finish_request)

    plugin.register()
    first = patched()
    plugin._registered = False  # as in a fresh call path: patching must still happen only once
    plugin.register()
    assert patched() == first
    assert check_hooks(pin.HOOKS) == [], "the check sees through our own wrappers"
