"""vLLM 0.32's CPU LoRA path applied the last slot's adapter to base-model rows (index -1);
the plugin's fix (selora_serve/vllm_ext/cpu_lora.py) must make their delta exactly zero."""

import pytest
import torch

from .conftest import MAX_NEW_TOKENS, hf_greedy

pytest.importorskip("vllm")


SLOT_IDS = [7, 9]  # slot 0 holds adapter id 7, slot 1 (the last: what index -1 selects) id 9
IN, R, OUTS = 16, 4, (12, 6, 6)  # a qkv-like layer: three slices


def _wrapper(index_mapping, prompt_mapping, is_prefill):
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from selora_serve.vllm_ext import cpu_lora

    cpu_lora.install()
    w = PunicaWrapperCPU(max_num_batched_tokens=32, max_batches=8, device="cpu")
    w.update_metadata(LoRAMapping(index_mapping, prompt_mapping, is_prefill=is_prefill), SLOT_IDS,
                      len(SLOT_IDS) + 1, 100)
    return w


def _reference(x, a, b, index_mapping, scale):
    """y = x W0 (taken as 0) + per row: scale * (x A_k^T) B_k^T for its adapter's slot k, nothing for id 0."""
    y = torch.zeros(x.shape[0], sum(OUTS))
    for i, lora_id in enumerate(index_mapping):
        if lora_id:
            k = SLOT_IDS.index(lora_id)
            y[i] = torch.cat([scale * (x[i] @ a_s[k, 0].T) @ b_s[k, 0].T for a_s, b_s in zip(a, b)])
    return y


@pytest.mark.parametrize("is_prefill", [False, True], ids=["decode", "prefill"])
def test_linear_layer_gives_base_rows_no_delta(is_prefill):
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    gen = torch.Generator().manual_seed(0)
    if is_prefill:  # three prompts of 2, 2 and 1 tokens: adapter 7, base model, adapter 9
        index_mapping, prompt_mapping = [7, 7, 0, 0, 9], [7, 0, 9]
    else:  # one token per sequence
        index_mapping = prompt_mapping = [7, 0, 9, 0]
    w = _wrapper(index_mapping, prompt_mapping, is_prefill)
    x = torch.randn(len(index_mapping), IN, generator=gen)
    a = tuple(torch.randn(len(SLOT_IDS), 1, R, IN, generator=gen) for _ in OUTS)  # vLLM's stacked layout
    b = tuple(torch.randn(len(SLOT_IDS), 1, out, R, generator=gen) for out in OUTS)
    y = torch.zeros(len(index_mapping), sum(OUTS))
    w.add_lora_linear(y, x, a, b, 0.5, OUTS)
    torch.testing.assert_close(y, _reference(x, a, b, index_mapping, 0.5))

    # The bug the fix guards against, through vLLM's own add_shrink: base rows get the last slot's delta.
    shrunk = tuple(torch.zeros(len(index_mapping), R) for _ in OUTS)
    PunicaWrapperCPU.add_shrink.__wrapped__(w, shrunk, x, a, 0.5)
    base = [i for i, lora_id in enumerate(index_mapping) if not lora_id]
    torch.testing.assert_close(shrunk[0][base], 0.5 * x[base] @ a[0][-1, 0].T)


def test_no_base_rows_leaves_the_shrink_alone():
    w = _wrapper([7, 9, 9], [7, 9, 9], False)
    assert w._selora_base_rows is None and w._selora_base_sampler_rows is None
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, IN, generator=gen)
    a = tuple(torch.randn(2, 1, R, IN, generator=gen) for _ in OUTS)
    b = tuple(torch.randn(2, 1, out, R, generator=gen) for out in OUTS)
    y = torch.zeros(3, sum(OUTS))
    w.add_lora_linear(y, x, a, b, 1.0, OUTS)
    torch.testing.assert_close(y, _reference(x, a, b, [7, 9, 9], 1.0))


def test_logits_give_base_rows_no_delta():
    index_mapping, prompt_mapping = [9, 9, 0, 7], [9, 0, 7]  # prefill: one sampled row per prompt
    w = _wrapper(index_mapping, prompt_mapping, True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, IN, generator=gen)
    a = torch.randn(2, 1, R, IN, generator=gen)
    b = torch.randn(2, 1, 10, R, generator=gen)
    y = torch.zeros(3, 10)
    w.add_lora_logits(y, x, a, b, 2.0)
    expected = torch.stack([2.0 * (x[i] @ a[k, 0].T) @ b[k, 0].T if k >= 0 else torch.zeros(10)
                            for i, k in enumerate([1, -1, 0])])
    torch.testing.assert_close(y, expected)


def test_install_is_idempotent():
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from selora_serve.vllm_ext import cpu_lora

    cpu_lora.install()
    before = {name: getattr(PunicaWrapperCPU, name) for name in cpu_lora._PATCHES}
    cpu_lora.install()
    assert {name: getattr(PunicaWrapperCPU, name) for name in cpu_lora._PATCHES} == before
    assert all(not getattr(m.__wrapped__, cpu_lora._MARK, False) for m in before.values())


@pytest.mark.vllm
def test_base_requests_batched_with_adapters_stay_base(vllm_engine, tiny_model, checkpoints, prompts):
    """Fill every slot, then batch base-model and adapter requests together."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    expected_base = hf_greedy(base, tok, prompts[:2])
    loras = [LoRARequest(f"cpu-{k}", 100 + i, str(checkpoints[k])) for i, k in enumerate(("haar", "db4"))]
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS, min_tokens=MAX_NEW_TOKENS)
    batch = [prompts[0], prompts[2], prompts[1], prompts[3]]
    requests = [None, loras[0], None, loras[1]]
    out = vllm_engine.generate(batch, params, lora_request=requests, use_tqdm=False)
    assert [list(out[0].outputs[0].token_ids), list(out[2].outputs[0].token_ids)] == expected_base
