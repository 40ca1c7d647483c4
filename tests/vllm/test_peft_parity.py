"""vLLM (the CPU build) serving `selora-convert to-peft` output gives the same greedy tokens as
transformers + PEFT on the same adapter."""

import pytest
import torch

from selora_serve.convert import to_peft

from .conftest import MAX_NEW_TOKENS, hf_greedy

pytestmark = pytest.mark.vllm


def _vllm_greedy(llm, prompts, lora_request=None):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS, min_tokens=MAX_NEW_TOKENS)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)]


def test_vllm_serves_to_peft_output_like_peft(vllm_engine, tiny_model, checkpoints, prompts, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm.lora.request import LoRARequest

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    base_tokens = hf_greedy(base, tok, prompts)
    assert _vllm_greedy(vllm_engine, prompts) == base_tokens

    for i, (kind, ckpt) in enumerate(sorted(checkpoints.items()), start=1):
        peft_dir = to_peft(ckpt, tmp_path / kind)
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32), str(peft_dir)
        ).eval()
        expected = hf_greedy(model, tok, prompts)
        assert expected != base_tokens, f"{kind}: the adapter should change the output"
        got = _vllm_greedy(vllm_engine, prompts, LoRARequest(kind, i, str(peft_dir)))
        assert got == expected, kind
