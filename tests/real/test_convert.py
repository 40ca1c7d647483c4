"""selora-convert on the real model's shapes: merging equals PEFT, and from-peft of a LoRA trained
on the real model reports the error it makes, equal to an independent computation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..converters.test_cli import cli

pytestmark = pytest.mark.real

PROMPT = "The capital of France is"


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0].float()


def test_merge_equals_peft(real_model, real_checkpoints, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selora_serve.convert import to_peft

    ckpt = real_checkpoints["real-db4"]
    merged = tmp_path / "merged"
    cli("merge", ckpt, "--base", real_model, merged)
    tok = AutoTokenizer.from_pretrained(str(real_model))
    got = _logits(AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval(), tok)
    base = AutoModelForCausalLM.from_pretrained(str(real_model), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(to_peft(ckpt, tmp_path / "peft"))).eval()
    want = _logits(peft, tok)
    with peft.disable_adapter():
        assert (want - _logits(peft, tok)).abs().max() > 1.0  # the adapter changes the output
    # float32 through 30 layers: W0 x + B (A x) and (W0 + B A) x round differently, ~1e-5 of the logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.fixture(scope="module")
def trained_lora(real_model, tmp_path_factory):
    """A LoRA trained for a few steps on the real model (selora-train --variant lora)."""
    root = tmp_path_factory.mktemp("lora")
    data = root / "data.jsonl"
    lines = (Path(__file__).parents[2] / "docs" / "examples" / "demo" / "extract.jsonl").read_text().splitlines()
    data.write_text("\n".join(lines[:16]) + "\n")
    out = root / "lora"
    proc = subprocess.run(
        [sys.executable, "-m", "selora_serve.training.cli", "--model", str(real_model), "--data", str(data),
         "--out", str(out), "--variant", "lora", "--rank", "8", "--alpha", "16", "--targets", "q_proj,v_proj",
         "--epochs", "1", "--batch-size", "8", "--lr", "2e-3", "--warmup", "0", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def _reported_error(stdout: str) -> float:
    return float(stdout.split("relative error of dW = B A: ")[1].split()[0])


def _independent_error(peft_dir, ckpt) -> float:
    from selora_serve.adapter import materialise_adapter
    from selora_serve.checkpoint import load_checkpoint
    from selora_serve.peft_io import read_peft

    dense = read_peft(peft_dir).weights
    fitted = materialise_adapter(load_checkpoint(ckpt))
    num = sum(torch.linalg.norm(fitted[n][1] @ fitted[n][0] - b.float() @ a.float()) ** 2 for n, (a, b) in dense.items())
    den = sum(torch.linalg.norm(b.float() @ a.float()) ** 2 for a, b in dense.values())
    return float((num / den) ** 0.5)


def test_from_peft_of_a_trained_lora_reports_its_error(real_model, trained_lora, tmp_path):
    out = cli("from-peft", trained_lora, tmp_path / "w", "--eta", 0.6, "--base", real_model).stdout
    error = _reported_error(out)
    assert 0.05 < error < 1.0, out  # 40 % of the coefficients cannot hold a dense LoRA exactly
    assert error == pytest.approx(_independent_error(trained_lora, tmp_path / "w"), rel=1e-3)
    info = json.loads(cli("inspect", tmp_path / "w", "--json").stdout)
    assert info["modules"] == 60 and info["target_modules"] == ["q_proj", "v_proj"]
    # Nothing masked, the wavelet basis is complete: the projection is exact.
    exact = _reported_error(cli("from-peft", trained_lora, tmp_path / "w0", "--eta", 0.0, "--base", real_model).stdout)
    assert exact < 1e-4
