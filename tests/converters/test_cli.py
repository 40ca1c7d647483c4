"""`selora-convert` end to end, through the installed console script."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selora_serve.checkpoint import COEF_FILE, read_manifest

EXE = shutil.which("selora-convert", path=str(Path(sys.executable).parent)) or "selora-convert"


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_teaches():
    out = cli("--help").stdout
    for word in ("init", "to-peft", "merge", "from-peft", "inspect", "docs/FORMAT.md", "examples:"):
        assert word in out
    for sub, word in [("init", "--random-b"), ("to-peft", "PEFT"), ("merge", "W0"), ("from-peft", "relative error"), ("inspect", "--json"),
                      ("quantize", "float16 scale")]:
        assert word in cli(sub, "--help").stdout


def test_init_inspect_to_peft_merge_from_peft(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    out = cli("init", "--base", tiny_model, "--out", ckpt, "--rank", 8, "--alpha", 16, "--eta", 0.6,
              "--basis", "wavelet", "--wavelet", "haar", "--targets", "q_proj,v_proj", "--random-b").stdout
    assert f"wrote {ckpt}" in out and "trainable parameters" in out
    info = json.loads(cli("inspect", ckpt, "--json").stdout)
    manifest = read_manifest(ckpt)
    assert info["trainable_parameters"] == manifest.num_coefficients()
    assert info["target_modules"] == ["q_proj", "v_proj"] and info["modules"] == 4
    assert info["bytes_on_disk"] == (ckpt / COEF_FILE).stat().st_size + (ckpt / "selora_config.json").stat().st_size
    assert 0 < info["trainable_percent"] < 100

    peft_dir = tmp_path / "peft"
    cli("to-peft", ckpt, peft_dir)
    assert {p.name for p in peft_dir.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    merged = tmp_path / "merged"
    cli("merge", ckpt, "--base", tiny_model, merged)
    assert (merged / "tokenizer.json").is_file() and (merged / "model.safetensors").is_file()

    # A dense LoRA that came from the same support projects back exactly ...
    out = cli("from-peft", peft_dir, tmp_path / "back", "--eta", 0.6, "--base", tiny_model).stdout
    assert float(out.split("relative error of dW = B A: ")[1].split()[0]) < 1e-5
    # ... onto another basis only approximately.
    out = cli("from-peft", peft_dir, tmp_path / "lossy", "--eta", 0.6, "--basis", "fourier", "--base", tiny_model).stdout
    assert 0.05 < float(out.split("relative error of dW = B A: ")[1].split()[0]) < 1.0
    # ... and, quantised, as a version 3 checkpoint.
    cli("from-peft", peft_dir, tmp_path / "q8", "--eta", 0.6, "--base", tiny_model, "--bits", 8)
    info = json.loads(cli("inspect", tmp_path / "q8", "--json").stdout)
    assert (info["format_version"], info["coefficient_bits"], info["quant_group_size"]) == (3, 8, 128)


def test_errors_are_one_clear_line(tiny_model, tmp_path):
    proc = cli("inspect", tmp_path / "missing", ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"selora-convert inspect: error: {tmp_path / 'missing'}: (directory): not found or not a directory"

    proc = cli("init", "--base", tiny_model, "--out", tmp_path / "x", "--eta", "1.5", ok=False)
    assert proc.returncode == 2 and "eta must be a number in [0, 1), got 1.5" in proc.stderr

    proc = cli("init", "--base", tiny_model, "--out", tmp_path / "x", "--targets", "q_proj,wq", ok=False)
    assert proc.returncode == 2 and "target module(s) wq not found in llama" in proc.stderr

    proc = cli("init", "--base", tmp_path, "--out", tmp_path / "x", ok=False)
    assert proc.returncode == 2 and "not a Hugging Face model directory (no config.json)" in proc.stderr

    cli("init", "--base", tiny_model, "--out", tmp_path / "x", "--rank", 8)
    proc = cli("init", "--base", tiny_model, "--out", tmp_path / "x", "--rank", 8, ok=False)
    assert proc.returncode == 2 and "already exists (pass --overwrite to replace it)" in proc.stderr

    proc = cli("to-peft", tmp_path / "x", tmp_path / "p", "--dtype", "int8", ok=False)
    assert proc.returncode == 2 and "invalid choice: 'int8'" in proc.stderr

    proc = cli("from-peft", tmp_path / "x", tmp_path / "y", "--eta", "0.5", ok=False)
    assert proc.returncode == 2 and "adapter_config.json: missing: not a PEFT adapter directory" in proc.stderr


@pytest.mark.parametrize("kind", ["db4", "fourier"])
def test_inspect_reports_the_basis(checkpoints, kind):
    out = cli("inspect", checkpoints[kind]).stdout
    assert ("fourier" if kind == "fourier" else "wavelet (db4)") in out
