"""Parameter counts for LLaMA-3-8B (its published config, no weights), as in the paper's Table 1."""

from selora_serve.adapter import BaseModelInfo, ModuleCoefficients, SpectralAdapter
from selora_serve.base_model import LLAMA3_8B, config_from_dict, num_parameters, target_shapes
from selora_serve.config import DEFAULT_TARGETS, SeLoRAConfig


def _counts(eta: float):
    config = config_from_dict(LLAMA3_8B)
    shapes = target_shapes(config, DEFAULT_TARGETS)
    adapter = SpectralAdapter(SeLoRAConfig(r=32, eta=eta), BaseModelInfo("llama3-8b", "-"))
    total = 0
    for name, (d_in, d_out) in shapes.items():
        mod = ModuleCoefficients(d_in, d_out, None, None)
        total += adapter.layout_a(mod).k + adapter.layout_b(mod).k
    lora = sum(32 * (i + o) for i, o in shapes.values())
    return total, lora, num_parameters(config), len(shapes)


def test_llama3_8b_counts_match_the_paper():
    selora, lora, base, modules = _counts(0.6)
    assert modules == 32 * 5
    assert base == 8_030_261_248
    # Table 1 prints LoRA as 56.6M / 0.70 % (0.7051 % exactly) and SeLoRA as 22.6M / 0.28 %.
    assert lora == 56_623_104 and 0.70 <= 100 * lora / base < 0.71
    assert round(selora / 1e6, 1) == 22.6 and 0.28 <= 100 * selora / base < 0.29
    assert abs(selora / lora - 0.4) < 1e-4


def test_base_facts_equal_a_walk_over_the_meta_model():
    """BaseFacts (what a server checks every adapter against) computes the shapes and the
    fingerprint once; both equal what the config gives directly."""
    import pytest
    import torch

    from selora_serve.base_model import BaseFacts, fingerprint, meta_model

    config = config_from_dict(dict(LLAMA3_8B, num_hidden_layers=2))
    facts = BaseFacts.of(config)
    assert BaseFacts.of(facts) is facts and BaseFacts.of(config) is facts  # cached per config
    assert facts.fingerprint == fingerprint(config) == fingerprint(facts)
    walked = {name: (m.in_features, m.out_features) for name, m in meta_model(config).named_modules()
              if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "down_proj")}
    assert facts.target_shapes(("q_proj", "down_proj")) == walked == target_shapes(config, ["q_proj", "down_proj"])
    assert walked["model.layers.1.mlp.down_proj"] == (14336, 4096)
    with pytest.raises(ValueError, match="not found in llama; its linear layers are .*gate_proj"):
        facts.target_shapes(("q_proj", "nope"))
