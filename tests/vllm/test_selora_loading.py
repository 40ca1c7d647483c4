"""vLLM loads SeLoRA checkpoint directories natively (the `selora` general plugin): the worker
decodes the coefficients in memory and the greedy tokens equal transformers + PEFT on the same
adapter converted by `selora-convert to-peft`; evicted adapters are decoded again correctly."""

from __future__ import annotations

import pytest
import torch

from selora_serve.convert import to_peft

from ..conftest import make_checkpoint
from .conftest import MAX_NEW_TOKENS, hf_greedy

pytestmark = pytest.mark.vllm

# LoRA ids are global to the shared engine: keep clear of other tests' ids.
ID_BASE = 100


@pytest.fixture(scope="module")
def adapters(tiny_model, checkpoints, tmp_path_factory):
    """Four SeLoRA checkpoints (haar, db4, fourier, a second haar) with their PEFT greedy tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("loading")
    ckpts = dict(checkpoints)
    ckpts["haar2"] = make_checkpoint(tiny_model, root / "haar2", seed=7, basis="wavelet", wavelet="haar")
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    prompts = ["the cat is", "river and mountain", "one two three four"]
    expected = {}
    for name, ckpt in ckpts.items():
        peft_dir = to_peft(ckpt, root / f"{name}-peft")
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(peft_dir)).eval()
        expected[name] = hf_greedy(model, tok, prompts)
    assert len({str(v) for v in expected.values()}) == len(expected), "adapters should differ"
    return ckpts, expected, prompts


def _greedy(llm, prompts, lora_request):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS, min_tokens=MAX_NEW_TOKENS)
    outs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_selora_directory_matches_peft(vllm_engine, adapters):
    from vllm.lora.request import LoRARequest

    ckpts, expected, prompts = adapters
    for i, kind in enumerate(("haar", "db4", "fourier"), start=ID_BASE):
        got = _greedy(vllm_engine, prompts, LoRARequest(f"selora-{kind}", i, str(ckpts[kind])))
        assert got == expected[kind], kind


def test_eviction_and_redecode_keep_outputs_right(vllm_engine, adapters):
    """max_loras = max_cpu_loras = 2 with 4 adapters: every round evicts and decodes again."""
    from vllm.lora.request import LoRARequest

    ckpts, expected, prompts = adapters
    names = sorted(ckpts)
    requests = {n: LoRARequest(f"lru-{n}", ID_BASE + 10 + i, str(ckpts[n])) for i, n in enumerate(names)}
    for _ in range(2):
        for name in names:
            assert _greedy(vllm_engine, prompts, requests[name]) == expected[name], name
    # Two adapters in one batch share the two slots.
    a, b = names[0], names[-1]
    mixed = _greedy(vllm_engine, prompts[:2] * 2, [requests[a]] * 2 + [requests[b]] * 2)
    assert mixed == expected[a][:2] + expected[b][:2]


def test_mismatched_checkpoint_is_refused_and_engine_keeps_serving(vllm_engine, adapters, tmp_path):
    """Loading an adapter made for another architecture fails with the reason; others still work.

    Loaded through `add_lora`, as the API server does before a first request: vLLM (any adapter,
    dense PEFT too) treats a failed load inside a generate step as fatal to the engine."""
    from vllm.lora.request import LoRARequest

    from selora_serve.tiny import TinySpec, build_tiny_model

    other = build_tiny_model(tmp_path / "other", spec=TinySpec(num_hidden_layers=1))
    bad = make_checkpoint(other, tmp_path / "bad", seed=3, basis="wavelet", wavelet="haar")
    ckpts, expected, prompts = adapters
    with pytest.raises(Exception, match="fingerprint"):
        vllm_engine.llm_engine.add_lora(LoRARequest("bad", ID_BASE + 50, str(bad)))
    good = LoRARequest("after-bad", ID_BASE + 51, str(ckpts["db4"]))
    assert _greedy(vllm_engine, prompts, good) == expected["db4"]


def test_quantised_checkpoints_serve_as_their_dequantised_adapter(vllm_engine, tiny_model, adapters, tmp_path):
    """An int8 / int4 checkpoint (format version 3) in vLLM equals transformers + PEFT on its own
    dequantised adapter (`to-peft` of the quantised checkpoint)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm.lora.request import LoRARequest

    from selora_serve.convert import quantize

    ckpts, _, prompts = adapters
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    for i, bits in enumerate((8, 4)):
        ckpt = quantize(ckpts["fourier"], tmp_path / f"int{bits}", bits=bits).out
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(to_peft(ckpt, tmp_path / f"int{bits}-peft"))).eval()
        want = hf_greedy(model, tok, prompts)
        assert _greedy(vllm_engine, prompts, LoRARequest(f"int{bits}", ID_BASE + 60 + i, str(ckpt))) == want, bits
