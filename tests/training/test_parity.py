"""A trained adapter gives the training module's logits (fp32, 1e-4) wherever it goes:
PEFT through `selora-convert to-peft` (or --export-peft), a merged model for SeDoRA, and
PEFT directly for the dense LoRA baseline."""

import json

import pytest
import torch

from selora_serve.base_model import fingerprint, load_config, num_parameters
from selora_serve.checkpoint import load_checkpoint, read_manifest
from selora_serve.convert import merge, to_peft
from selora_serve.training.job import TrainJob, load_model, train
from selora_serve.training.trainer import TrainConfig

from .conftest import logits, spec_for

STEPS = TrainConfig(epochs=4, lr=1e-2, batch_size=3, warmup=0, seed=1)


def _train(kind, tiny_model, qa_file, out, **kw):
    job = TrainJob(model=str(tiny_model), data=str(qa_file), out=str(out), spec=spec_for(kind, dropout=0.05), train=STEPS, **kw)
    summary = train(job, progress=False)
    assert summary.fit.steps == 8 and summary.model.training is False
    return summary


def _peft(tiny_model, peft_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(tiny_model), str(peft_dir)).eval()


@pytest.mark.parametrize("kind", ["haar", "db4", "fourier"])
def test_trained_checkpoint_through_to_peft_gives_the_training_logits(kind, tiny_model, qa_file, batch, tmp_path):
    summary = _train(kind, tiny_model, qa_file, tmp_path / "ckpt", export_peft=str(tmp_path / "exported"))
    expected = logits(summary.model, batch)
    base = logits(load_model(tiny_model), batch)
    assert (expected - base).abs().max() > 1e-2, "training should have moved the logits"

    ckpt = tmp_path / "ckpt"
    assert not (tmp_path / "ckpt.train").exists()  # the work directory is removed after success
    manifest = read_manifest(ckpt)
    config = load_config(tiny_model)
    assert manifest.base.name == str(tiny_model)
    assert manifest.base.fingerprint == fingerprint(config) and manifest.base.num_parameters == num_parameters(config)
    assert manifest.config == spec_for(kind).config
    load_checkpoint(ckpt, base_config=config)

    torch.testing.assert_close(logits(_peft(tiny_model, to_peft(ckpt, tmp_path / "peft")), batch), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(_peft(tiny_model, tmp_path / "exported"), batch), expected, atol=1e-4, rtol=0)


def test_sedora_through_merge_and_peft_gives_the_training_logits(tiny_model, qa_file, batch, tmp_path):
    summary = _train("sedora", tiny_model, qa_file, tmp_path / "ckpt")
    expected = logits(summary.model, batch)
    adapter = load_checkpoint(tmp_path / "ckpt")
    mags = [m.magnitude for m in adapter.modules.values()]
    assert all(m is not None for m in mags)
    merged = load_model(merge(tmp_path / "ckpt", tiny_model, tmp_path / "merged"))
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(_peft(tiny_model, to_peft(tmp_path / "ckpt", tmp_path / "peft")), batch), expected, atol=1e-4, rtol=0)


def test_lora_baseline_writes_a_peft_directory(tiny_model, qa_file, batch, tmp_path):
    summary = _train("lora", tiny_model, qa_file, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert config["base_model_name_or_path"] == str(tiny_model) and not config["use_dora"]
    torch.testing.assert_close(logits(_peft(tiny_model, tmp_path / "lora"), batch), logits(summary.model, batch), atol=1e-4, rtol=0)


def test_outputs_are_checked_before_training(tiny_model, qa_file, tmp_path):
    (tmp_path / "taken").mkdir()
    job = TrainJob(model=str(tiny_model), data=str(qa_file), out=str(tmp_path / "taken"), spec=spec_for("haar"), train=STEPS)
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(job, progress=False)
    with pytest.raises(ValueError, match="--variant lora already writes a PEFT"):
        TrainJob(model=str(tiny_model), data=str(qa_file), out="x", spec=spec_for("lora"), export_peft="y")
