"""The compiled CPU decode (spectral/fused.py) equals the plain reference for every basis, every
wavelet the format allows, odd shapes, float / int8 / int4 rows, any chunking and thread count."""

import pytest
import torch

from selora_serve.checkpoint.quant import QuantSpec, dequantize_reference, quantize
from selora_serve.spectral import fused, materialise as mat
from selora_serve.spectral.basis import Basis
from selora_serve.spectral.materialise import layout_for, materialise_reference
from selora_serve.spectral.wavelet import _discrete_wavelets

BASES = [Basis("wavelet", "haar"), Basis("wavelet", "db4"), Basis("wavelet", "bior2.2"),
         Basis("wavelet", "coif1"), Basis("fourier"), Basis("fourier-real")]
SHAPES = [(7, 33), (32, 96), (96, 32), (1, 1), (2, 5), (33, 17)]


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * max(1.0, want.abs().max().item()))


def _stored(coef: torch.Tensor, bits: int, group: int):
    """(values, scales, float32 coefficients they stand for) of rows `coef` at `bits`."""
    if bits == fused.FLOAT_BITS:
        return coef, None, coef
    spec = QuantSpec(bits, group)
    pairs = [quantize(row, spec) for row in coef]
    values = torch.stack([q for q, _ in pairs])
    scales = torch.stack([s for _, s in pairs])
    exact = torch.stack([dequantize_reference(q, s, coef.shape[1], spec) for q, s in pairs])
    return values, scales.float(), exact


@pytest.fixture(params=[1 << 21, 64], ids=["one-chunk", "one-row"])
def chunking(request, monkeypatch):
    monkeypatch.setattr(mat, "_CPU_CHUNK_ENTRIES", request.param)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("basis", BASES, ids=lambda b: b.label)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits,group", [(0, 1), (8, 16), (4, 16), (4, 7)], ids=["float", "int8", "int4", "int4-odd-group"])
def test_fused_equals_reference(basis, shape, bits, group, chunking, threads):
    layout = layout_for(basis, 11, 0.6, shape)
    coef = torch.randn(5, layout.k, generator=torch.Generator().manual_seed(1))
    values, scales, exact = _stored(coef, bits, group)
    chunks = fused.decode_stacked(values, scales, bits, group, layout)
    got = torch.cat(chunks)
    assert got.shape == (5, *shape) and got.dtype == torch.float32
    _close(got, materialise_reference(exact, layout))


@pytest.mark.parametrize("wavelet", sorted(_discrete_wavelets()))
def test_every_discrete_wavelet(wavelet):
    """Any pywt discrete wavelet the format accepts, on odd and even sides, int4 included."""
    for shape in [(5, 9), (12, 3)]:
        layout = layout_for(Basis("wavelet", wavelet), 2, 0.5, shape)
        coef = torch.randn(2, layout.k, generator=torch.Generator().manual_seed(2))
        values, scales, exact = _stored(coef, 4, 5)
        _close(torch.cat(fused.decode_stacked(values, scales, 4, 5, layout)), materialise_reference(exact, layout))


def test_bfloat16_rows_and_empty_stack():
    layout = layout_for(Basis("wavelet", "haar"), 0, 0.5, (8, 6))
    coef = torch.randn(3, layout.k).to(torch.bfloat16)
    _close(torch.cat(fused.decode_stacked(coef, None, 0, 1, layout)), materialise_reference(coef.float(), layout))
    assert fused.decode_stacked(torch.zeros(0, layout.k), None, 0, 1, layout) == []


@pytest.mark.parametrize("values,scales,bits,message", [
    (torch.zeros(2, 23), None, 0, r"expected \(B, 24\) stored values"),
    (torch.zeros(2, 24), None, 3, "bits=3"),
    (torch.zeros(2, 24), torch.ones(2, 3), 8, "must be torch.int8"),
    (torch.zeros(2, 24, dtype=torch.int8), None, 8, r"expected \(2, 3\) scales"),
    (torch.zeros(2, 12, dtype=torch.uint8), torch.ones(2, 2), 4, r"expected \(2, 3\) scales for group size 8"),
])
def test_refuses_malformed_stacks(values, scales, bits, message):
    layout = layout_for(Basis("wavelet", "haar"), 0, 0.5, (8, 6))
    assert layout.k == 24
    with pytest.raises(ValueError, match=message):
        fused.decode_stacked(values, scales, bits, 8, layout)


def test_warm_up_compiles_every_form():
    fused.warm_up()
    assert fused._kernels.cache_info().currsize == 1


def test_kernel_cache_goes_somewhere_writable_on_a_read_only_install(tmp_path, monkeypatch):
    from pathlib import Path

    from selora_serve.spectral import _kernels

    package = Path(_kernels.__file__).parent
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    real_access = _kernels.os.access
    monkeypatch.setattr(_kernels.os, "access", lambda p, mode: False if Path(p) == package else real_access(p, mode))
    monkeypatch.setattr(_kernels.Path, "home", lambda: tmp_path)
    assert _kernels._cache_dir() == str(tmp_path / ".cache" / "selora-serve" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert _kernels._cache_dir() is None  # numba reads the variable itself
