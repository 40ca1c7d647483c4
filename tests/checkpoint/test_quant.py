"""Quantised coefficients (format version 3): the math against its loop definition, the error
bound, packing, the on-disk round trip through every reader, and clear refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE, CheckpointError, load_checkpoint, read_manifest
from selora_serve.checkpoint.format import check_coefficients
from selora_serve.checkpoint.quant import QuantSpec, dequantize, dequantize_reference, pack4, quantize, unpack4


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("k, group", [(1, 64), (63, 64), (64, 64), (131, 32), (1000, 7)])
def test_dequantize_equals_the_definition_and_the_error_is_bounded(bits, k, group):
    spec = QuantSpec(bits, group)
    x = torch.randn(k, generator=torch.Generator().manual_seed(k + bits)) * torch.logspace(-3, 0, k)
    q, scale = quantize(x, spec)
    assert q.dtype == (torch.int8 if bits == 8 else torch.uint8) and q.shape == (spec.stored_len(k),)
    assert scale.dtype == torch.float16 and scale.shape == (math.ceil(k / group),)
    got = dequantize(q, scale, k, spec)
    torch.testing.assert_close(got, dequantize_reference(q, scale, k, spec), rtol=0, atol=0)
    bound = scale.float().repeat_interleave(group)[:k] / 2
    assert bool(((got - x).abs() <= bound * (1 + 1e-6) + 1e-12).all())


def test_int4_packing_round_trips_every_value_and_odd_lengths():
    values = torch.tensor([-8, -7, -1, 0, 1, 7, 3], dtype=torch.int8)
    packed = pack4(values)
    assert packed.tolist() == [0x98, 0x0F, 0x71, 0x03], "element 2j low nibble, 2j+1 high, two's complement"
    assert unpack4(packed, 7).tolist() == values.tolist()


def test_zero_groups_and_bad_specs():
    q, scale = quantize(torch.zeros(10), QuantSpec(4, 4))
    assert scale.tolist() == [0, 0, 0] and dequantize(q, scale, 10, QuantSpec(4, 4)).abs().sum() == 0
    for bits, group, msg in ((3, 64, "bits=3: expected 8 or 4"), (8, 0, r"group_size=0: expected an integer")):
        with pytest.raises(ValueError, match=msg):
            QuantSpec(bits, group)
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize(torch.tensor([1.0, float("nan")]), QuantSpec(8))


@pytest.fixture
def quantised(checkpoints, tmp_path):
    from selora_serve.convert import quantize as quantize_ckpt

    return {bits: quantize_ckpt(checkpoints["db4"], tmp_path / f"int{bits}", bits=bits, group_size=32)
            for bits in (8, 4)}


def test_a_quantised_checkpoint_loads_as_its_dequantised_adapter(checkpoints, quantised, tiny_model):
    from selora_serve.base_model import load_config

    original = load_checkpoint(checkpoints["db4"])
    for bits, report in quantised.items():
        manifest = read_manifest(report.out)
        assert manifest.version == 3 and manifest.quantization == QuantSpec(bits, 32)
        loaded = load_checkpoint(report.out, base_config=load_config(tiny_model))
        for name, m in original.modules.items():
            for key in ("coef_a", "coef_b"):
                want, got = getattr(m, key), getattr(loaded.modules[name], key)
                assert got.dtype == want.dtype and got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=0, atol=float(want.abs().max()) / (2 ** (bits - 1) - 1))
        check_coefficients(manifest, (report.out / COEF_FILE).read_bytes())
    assert quantised[4].bytes_after < quantised[8].bytes_after < quantised[8].bytes_before
    assert quantised[8].relative_error < 0.01 < quantised[4].relative_error < 0.1


def test_quantised_dense_outputs_are_the_dequantised_adapter(quantised, tmp_path):
    """to-peft of a quantised checkpoint = to-peft of its dequantised adapter saved unquantised."""
    from safetensors.torch import load_file

    from selora_serve.checkpoint import save_checkpoint
    from selora_serve.convert import to_peft

    report = quantised[4]
    plain = save_checkpoint(load_checkpoint(report.out), tmp_path / "dequantised")
    a = load_file(to_peft(report.out, tmp_path / "peft-q") / "adapter_model.safetensors")
    b = load_file(to_peft(plain, tmp_path / "peft-plain") / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _edit(path, fn):
    data = json.loads((path / CONFIG_FILE).read_text())
    fn(data)
    (path / CONFIG_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize("edit, field, message", [
    (lambda d: d.update(format_version=2), "quantization", "a version 3 field; this manifest says version 2"),
    (lambda d: d["quantization"].update(bits=2), "quantization", "bits=2: expected 8 or 4"),
    (lambda d: d["quantization"].update(scale_dtype="float32"), "quantization.scale_dtype", "expected 'float16'"),
    (lambda d: d["quantization"].pop("group_size"), "quantization", "expected {\"bits\""),
    (lambda d: d["quantization"].update(group_size=64), None, "has shape"),
])
def test_bad_quantisation_fields_are_refused_by_name(quantised, edit, field, message):
    path = quantised[4].out
    _edit(path, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    if field is not None:
        assert err.value.field == field and err.value.path.endswith(CONFIG_FILE)
    else:
        with pytest.raises(CheckpointError, match=message):  # the byte-level check agrees
            check_coefficients(read_manifest(path), (path / COEF_FILE).read_bytes())


def test_a_nan_scale_is_refused_by_both_readers(quantised):
    from safetensors.torch import load_file, save_file

    path = quantised[8].out
    tensors = load_file(path / COEF_FILE)
    key = next(k for k in tensors if k.endswith(".scale"))
    tensors[key][0] = float("nan")
    save_file(tensors, str(path / COEF_FILE))
    with pytest.raises(CheckpointError, match="NaN/Inf") as err:
        load_checkpoint(path)
    assert err.value.field == key
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        check_coefficients(read_manifest(path), (path / COEF_FILE).read_bytes())


def test_quantize_cli_prints_bytes_and_error(checkpoints, tmp_path, capsys):
    from converters.cli import main

    assert main(["quantize", str(checkpoints["haar"]), str(tmp_path / "q"), "--bits", "8"]) == 0
    out = capsys.readouterr().out
    assert "8-bit coefficients, a float16 scale per 128" in out and "relative error of the coefficients" in out
    assert main(["inspect", str(tmp_path / "q")]) == 0
    assert "8-bit coefficients, a float16 scale per 128, float32" in capsys.readouterr().out
    assert main(["quantize", str(tmp_path / "q"), str(tmp_path / "qq"), "--bits", "4"]) == 2
    assert "already quantised (8 bits); quantise the original" in capsys.readouterr().err
