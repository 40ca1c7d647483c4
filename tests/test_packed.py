"""The packed (as-stored) adapter: one stack per layout, quantised values kept quantised, decoded
by the compiled path to exactly what the in-memory adapter decodes to."""

import pytest
import torch

from selora_serve.adapter import materialise_adapter
from selora_serve.checkpoint import load_checkpoint, load_packed
from selora_serve.packed import materialise_packed, pack
from selora_serve.peft_io import dense_state_dict
from selora_serve.spectral.materialise import materialise_reference


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("kind", ["haar", "db4", "fourier"])
def test_packed_decodes_to_the_reference(checkpoints, kind):
    adapter = load_checkpoint(checkpoints[kind])
    packed = load_packed(checkpoints[kind])
    assert packed.bits == 0 and len(packed.stacks) == len(adapter.layouts())
    assert packed.nbytes == sum(t.nbytes for m in adapter.modules.values() for t in (m.coef_a, m.coef_b))
    dense = materialise_packed(packed)
    assert dense.keys() == adapter.modules.keys()
    for name, mod in adapter.modules.items():
        _close(dense[name][0], materialise_reference(mod.coef_a, adapter.layout_a(mod)))
        _close(dense[name][1], materialise_reference(mod.coef_b, adapter.layout_b(mod)))
    for name, (a, b) in materialise_packed(pack(adapter)).items():
        torch.testing.assert_close(a, dense[name][0], rtol=0, atol=0)
        torch.testing.assert_close(b, dense[name][1], rtol=0, atol=0)
    bf16 = materialise_packed(packed, torch.bfloat16)
    assert next(iter(bf16.values()))[0].dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantised_checkpoint_stays_quantised_and_decodes_to_its_dequantised_adapter(checkpoints, tmp_path, bits):
    from selora_serve.convert import quantize

    out = quantize(checkpoints["db4"], tmp_path / f"int{bits}", bits=bits, group_size=32).out
    packed = load_packed(out)
    assert packed.bits == bits and packed.group_size == 32
    assert {s.values.dtype for s in packed.stacks} == {torch.int8 if bits == 8 else torch.uint8}
    dequantised = load_checkpoint(out)
    coef_bytes = sum(t.nbytes for m in dequantised.modules.values() for t in (m.coef_a, m.coef_b))
    assert packed.nbytes < (0.3 if bits == 8 else 0.17) * coef_bytes  # values + float32 scales vs float32
    got, want = dense_state_dict(packed), dense_state_dict(dequantised)
    assert got.keys() == want.keys()
    for key in want:
        _close(got[key], want[key])


def test_materialise_adapter_on_cpu_is_the_compiled_path_and_matches_the_torch_path(checkpoints):
    from selora_serve.spectral.materialise import materialise_rows

    adapter = load_checkpoint(checkpoints["haar"])
    dense = materialise_adapter(adapter)
    for name, mod in adapter.modules.items():
        _close(dense[name][0], materialise_rows([mod.coef_a], adapter.layout_a(mod))[0])


@pytest.mark.parametrize("bits", [0, 8, 4])
def test_the_torch_path_for_other_devices_equals_the_compiled_one(checkpoints, tmp_path, bits):
    """Off the CPU, materialise_packed dequantises with torch and decodes with the torch path:
    run here on the CPU (compiled=False), it gives the compiled path's numbers."""
    from selora_serve.convert import quantize

    path = checkpoints["db4"] if bits == 0 else quantize(checkpoints["db4"], tmp_path / "q", bits=bits).out
    packed = load_packed(path)
    compiled, plain = materialise_packed(packed), materialise_packed(packed, compiled=False)
    for name, (a, b) in compiled.items():
        _close(plain[name][0], a)
        _close(plain[name][1], b)
    with pytest.raises(ValueError, match="compiled decode runs on the CPU"):
        materialise_packed(packed, device="meta", compiled=True)


def test_sedora_magnitudes_and_bfloat16_coefficients_come_through_the_bytes(tiny_model, tmp_path):
    from tests.conftest import make_checkpoint

    path = make_checkpoint(tiny_model, tmp_path / "sedora", variant="sedora", basis="wavelet", wavelet="haar")
    adapter, packed = load_checkpoint(path), load_packed(path)
    assert packed.magnitudes.keys() == adapter.modules.keys()
    for name, mod in adapter.modules.items():
        assert torch.equal(packed.magnitudes[name], mod.magnitude)
    from selora_serve.checkpoint import save_checkpoint

    bf16 = save_checkpoint(adapter, tmp_path / "bf16", coefficient_dtype="bfloat16")
    stacks = load_packed(bf16).stacks
    assert {s.values.dtype for s in stacks} == {torch.bfloat16}
    name, which = stacks[0].members[0]
    want = load_checkpoint(bf16).modules[name]
    assert torch.equal(stacks[0].values[0], want.coef_a if which == 0 else want.coef_b)
