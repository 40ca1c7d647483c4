"""`selora-train` as a command (run as `python -m selora_serve.training.cli` until the console
script is registered in pyproject.toml)."""

import json
import subprocess
import sys

from selora_serve.checkpoint import read_manifest

from .conftest import QA, write_jsonl


def cli(*args, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "selora_serve.training.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_teaches():
    out = cli("--help").stdout
    for word in ("--variant", "sedora", "lora", "Alpaca", "### Response:", "--resume", "OUT.train", "--export-peft",
                 "--grad-accum", "--warmup", "cosine", "line number", "examples:", "docs/FORMAT.md", "--optimizer",
                 "projected-adamw"):
        assert word in out, word


def test_trains_and_writes_a_checkpoint_or_names_the_bad_line(tiny_model, qa_file, tmp_path):
    out = tmp_path / "ckpt"
    proc = cli("--model", tiny_model, "--data", qa_file, "--out", out, "--rank", 4, "--alpha", 8, "--eta", 0.5,
               "--basis", "fourier", "--targets", "q_proj,v_proj", "--epochs", 2, "--batch-size", 3, "--lr", 1e-3,
               "--warmup", 1, "--quiet", "--export-peft", tmp_path / "peft")
    assert f"wrote {out}" in proc.stdout and "trainable parameters" in proc.stdout and "tokens/s" in proc.stdout
    manifest = read_manifest(out)
    assert manifest.config.basis == "fourier" and manifest.config.r == 4 and manifest.config.eta == 0.5
    assert sorted(manifest.config.target_modules) == ["q_proj", "v_proj"] and len(manifest.modules) == 4
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4

    again = cli("--model", tiny_model, "--data", qa_file, "--out", out, "--quiet", ok=False)
    assert again.returncode == 2 and "already exists" in again.stderr

    bad = write_jsonl(tmp_path / "bad.jsonl", QA[:2] + [{"instruction": "no answer"}])
    proc = cli("--model", tiny_model, "--data", bad, "--out", tmp_path / "x", "--quiet", ok=False)
    assert proc.returncode == 2
    assert f"selora-train: error: {bad}:3: missing field 'output'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_coef_bits_writes_a_quantised_checkpoint_and_its_dequantised_twin(tiny_model, qa_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    from selora_serve.convert import to_peft

    out = tmp_path / "q"
    cli("--model", tiny_model, "--data", qa_file, "--out", out, "--rank", 4, "--alpha", 8, "--targets", "q_proj",
        "--epochs", 1, "--batch-size", 3, "--quiet", "--coef-bits", 4, "--export-peft", tmp_path / "peft")
    manifest = read_manifest(out)
    assert manifest.version == 3 and manifest.quantization.bits == 4
    twin = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    again = load_file(to_peft(out, tmp_path / "again") / "adapter_model.safetensors")
    assert twin.keys() == again.keys() and all(torch.equal(twin[k], again[k]) for k in twin), \
        "--export-peft writes the dequantised adapter"
    lora = cli("--model", tiny_model, "--data", qa_file, "--out", tmp_path / "l", "--variant", "lora",
               "--coef-bits", 8, "--quiet", ok=False)
    assert lora.returncode == 2 and "--coef-bits quantises spectral coefficients" in lora.stderr


def test_projected_optimizer_trains_spectral_variants_and_refuses_dense_lora(tiny_model, qa_file, tmp_path):
    out = tmp_path / "f"
    proc = cli("--model", tiny_model, "--data", qa_file, "--out", out, "--rank", 4, "--alpha", 8, "--basis", "fourier",
               "--targets", "q_proj,v_proj", "--epochs", 1, "--batch-size", 3, "--optimizer", "projected-adamw", "--quiet")
    assert f"wrote {out}" in proc.stdout and read_manifest(out).config.basis == "fourier"
    bad = cli("--model", tiny_model, "--data", qa_file, "--out", tmp_path / "l", "--variant", "lora",
              "--optimizer", "projected-adamw", "--quiet", ok=False)
    assert bad.returncode == 2 and "--variant lora trains dense ones (use --optimizer adamw)" in bad.stderr
    assert not (tmp_path / "l").exists()
