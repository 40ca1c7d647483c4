"""One adapter, the same logits three ways (fp32, 1e-4): the library's reference forward pass,
PEFT loading the `to-peft` output, and transformers loading the `merge` output."""

import pytest
import torch

from selora_serve.checkpoint import load_checkpoint
from selora_serve.convert import merge, to_peft
from selora_serve.reference import adapted

from .conftest import make_checkpoint


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batch(tiny_model, prompts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    return tok(prompts, return_tensors="pt", padding=True)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("kind", ["haar", "db4", "fourier"])
def test_reference_peft_and_merge_agree(kind, checkpoints, tiny_model, batch, tmp_path):
    from peft import PeftModel

    ckpt = checkpoints[kind]
    adapter = load_checkpoint(ckpt)
    base = _model(tiny_model)
    base_logits = _logits(base, batch)
    with adapted(base, adapter):
        ref = _logits(base, batch)
    assert (ref - base_logits).abs().max() > 1e-2, "the adapter should change the logits"
    torch.testing.assert_close(_logits(base, batch), base_logits)  # hooks removed

    peft_model = PeftModel.from_pretrained(_model(tiny_model), str(to_peft(ckpt, tmp_path / "peft"))).eval()
    torch.testing.assert_close(_logits(peft_model, batch), ref, atol=1e-4, rtol=0)

    merged = _model(merge(ckpt, tiny_model, tmp_path / "merged"))
    torch.testing.assert_close(_logits(merged, batch), ref, atol=1e-4, rtol=0)


def test_fresh_adapter_with_zero_b_leaves_the_model_unchanged(tiny_model, batch, tmp_path):
    from selora_serve.config import SeLoRAConfig
    from selora_serve.convert import init_checkpoint

    ckpt = init_checkpoint(tiny_model, tmp_path / "zero", SeLoRAConfig(r=8, alpha=16))
    base = _model(tiny_model)
    with adapted(base, load_checkpoint(ckpt)):
        torch.testing.assert_close(_logits(base, batch), _logits(_model(tiny_model), batch))


def test_sedora_merge_equals_reference_and_peft(tiny_model, batch, tmp_path):
    from peft import PeftModel

    ckpt = make_checkpoint(tiny_model, tmp_path / "sedora", seed=9, variant="sedora", basis="wavelet", wavelet="haar")
    adapter = load_checkpoint(ckpt)
    base = _model(tiny_model)
    with adapted(base, adapter):
        ref = _logits(base, batch)
    merged = _model(merge(ckpt, tiny_model, tmp_path / "merged"))
    torch.testing.assert_close(_logits(merged, batch), ref, atol=1e-4, rtol=0)
    peft_model = PeftModel.from_pretrained(_model(tiny_model), str(to_peft(ckpt, tmp_path / "peft"))).eval()
    torch.testing.assert_close(_logits(peft_model, batch), ref, atol=1e-4, rtol=0)
