"""What a worker prepares at engine start: the compiled kernels and the default layouts' tables."""

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from selora_serve.base_model import BaseFacts, load_config  # noqa: E402
from selora_serve.spectral import fused  # noqa: E402
from selora_serve.vllm_ext.loading import default_layouts  # noqa: E402


def test_default_layouts_are_those_of_a_default_adapter_and_get_their_tables(tiny_model):
    from selora_serve.adapter import BaseModelInfo, init_adapter
    from selora_serve.config import SeLoRAConfig

    facts = BaseFacts.of(load_config(tiny_model))
    layouts = default_layouts(facts, SimpleNamespace(max_lora_rank=8))
    assert {lay.basis.label for lay in layouts} == {"wavelet/haar", "wavelet/db4", "fourier"}
    for config in (SeLoRAConfig(r=8), SeLoRAConfig(r=8, wavelet="db4"), SeLoRAConfig(r=8, basis="fourier")):
        adapter = init_adapter(config, BaseModelInfo("tiny", facts.fingerprint),
                               facts.target_shapes(config.target_modules))
        assert set(adapter.layouts().values()) <= set(layouts)
    fused._positions32.cache_clear()
    fused.prepare(layouts)
    assert fused._positions32.cache_info().currsize == len(set(layouts))
    assert default_layouts(facts, SimpleNamespace(max_lora_rank=None)) == []
