"""vLLM 0.32's CPU LoRA path applied the last slot's adapter to base-model rows (index -1);
the plugin's fix (selora_serve/vllm_ext/cpu_lora.py) must make their delta exactly zero."""

import pytest
import torch

from .conftest import MAX_NEW_TOKENS, hf_greedy

pytest.importorskip("vllm")


def test_shrink_gives_base_rows_no_delta():
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    from selora_serve.vllm_ext import cpu_lora

    cpu_lora.install()
    patched = lora_ops.bgmv_shrink
    assert punica_cpu.bgmv_shrink is patched
    original = patched.__wrapped__

    x = torch.randn(3, 16)
    slots = torch.randn(2, 1, 4, 16)  # (slots, 1, r, in), as the CPU wrapper stacks them
    indices = torch.tensor([0, -1, 1])
    buggy = torch.empty(3, 4)
    original(x, slots, buggy, indices, 1.0)
    # The bug this guards against: row 1 (no adapter) got slot -1, i.e. the last slot's A.
    torch.testing.assert_close(buggy[1], slots[-1, 0] @ x[1])

    fixed = torch.empty(3, 4)
    patched(x, slots, fixed, indices, 1.0)
    assert torch.equal(fixed[1], torch.zeros(4))
    torch.testing.assert_close(fixed[[0, 2]], buggy[[0, 2]])
    cpu_lora.install()  # idempotent
    assert lora_ops.bgmv_shrink is patched


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
