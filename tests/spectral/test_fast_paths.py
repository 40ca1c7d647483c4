"""Every fast decoding path equals its plain reference (fp32, 1e-6), and the benchmark runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selora_serve.spectral import fourier, materialise as mat, wavelet
from selora_serve.spectral.basis import Basis
from selora_serve.spectral.omega import omega_checksum, omega_digest
from selora_serve.spectral.materialise import (
    layout_for,
    materialise,
    materialise_chunks,
    materialise_reference,
    materialise_rows,
)

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(7, 33), (8, 64), (32, 96), (96, 32), (1, 1), (2, 5)]
# Every basis has a fast decoder: Haar's butterfly, the FFTs, the other wavelets' two GEMMs.
FAST = [Basis("wavelet", "haar"), Basis("fourier"), Basis("fourier-real"),
        Basis("wavelet", "db4"), Basis("wavelet", "bior2.2"), Basis("wavelet", "coif1")]


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * max(1.0, want.abs().max().item()))


@pytest.fixture(params=[1 << 21, 500, 64], ids=["one-chunk", "few-rows", "one-row"])
def chunking(request, monkeypatch):
    """Decode in one chunk, in chunks of a few matrices (with a remainder), and one by one."""
    monkeypatch.setattr(mat, "_CPU_CHUNK_ENTRIES", request.param)


def _check_materialise(basis: Basis, shape, lead) -> None:
    layout = layout_for(basis, 5, 0.6, shape)
    coef = torch.randn(*lead, layout.k, generator=torch.Generator().manual_seed(0))
    got = materialise(coef, layout)
    assert got.shape == (*lead, *shape) and got.dtype == torch.float32 and got.is_contiguous()
    _close(got, materialise_reference(coef, layout))


@pytest.mark.parametrize("basis", FAST, ids=lambda b: b.label)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_fast_decoders_equal_reference(basis, shape, lead, chunking):
    _check_materialise(basis, shape, lead)


@pytest.mark.parametrize("basis", FAST, ids=lambda b: b.label)
def test_rows_from_a_list_and_in_low_precision(basis, chunking):
    """materialise_rows decodes per-module tensors (any float dtype) without stacking them."""
    layout = layout_for(basis, 9, 0.4, (32, 96))
    rows = [torch.randn(layout.k, dtype=torch.float64) for _ in range(4)]
    want = materialise_reference(torch.stack(rows), layout)
    _close(materialise_rows(rows, layout), want)
    got = materialise_rows(rows, layout, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want.to(torch.bfloat16))
    assert materialise_rows([], layout).shape == (0, 32, 96)
    chunks = materialise_chunks(rows, layout)
    assert len(chunks) == (4 if mat._CPU_CHUNK_ENTRIES < 2 * 32 * 96 else 1)
    torch.testing.assert_close(torch.cat(chunks), materialise_rows(rows, layout), rtol=0, atol=0)
    assert materialise_chunks([], layout) == []


def test_materialise_rejects_wrong_length():
    layout = layout_for(FAST[0], 0, 0.6, (8, 64))
    with pytest.raises(ValueError, match="coefficients"):
        materialise_rows([torch.zeros(layout.k), torch.zeros(layout.k - 1)], layout)


@pytest.mark.parametrize("shape", [(7, 33), (8, 64), (32, 96), (96, 32)])
def test_haar_butterfly_equals_ptwt(shape):
    spectrum = torch.randn(3, *wavelet.spectral_shape(shape, "haar"))
    _close(wavelet.haar_idwt2(spectrum, shape), wavelet.idwt2(spectrum, "haar", shape))


def test_haar_block_positions_are_a_permutation():
    positions = wavelet.haar_block_positions((6, 10))
    assert sorted(positions.tolist()) == list(range(60))
    with pytest.raises(ValueError, match="even"):
        wavelet.haar_block_positions((5, 10))


@pytest.mark.parametrize("shape", [(7, 33), (8, 64), (32, 96), (96, 32), (33, 7), (1, 1), (2, 5), (5, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fourier_even_half_equals_complex_ifft2(shape, dtype):
    spectrum = torch.randn(4, *shape, dtype=dtype)
    got = fourier.ifft2_real_fast(spectrum)
    assert got.dtype == dtype
    _close(got, fourier.ifft2_real(spectrum))
    m, n = shape
    half = (min(m, n), max(m, n) // 2 + 1)  # wide orientation, halved along the longer side
    assert fourier.half_shape(shape) == half
    positions = fourier.even_half_positions(shape)
    assert positions.shape == (2, *half) and positions.max() < m * n
    # the two gathers are each other's mirror: (-u, -v) of (-u, -v) is (u, v)
    first, second = positions.reshape(2, -1)
    assert set(first) <= set(range(m * n))
    flat = spectrum.reshape(4, -1)
    even = (flat[:, first] + flat[:, second]) / 2
    mirrored = flat.reshape(4, m, n).flip(-2, -1).roll((1, 1), (-2, -1)).reshape(4, -1)
    torch.testing.assert_close(even, (flat[:, first] + mirrored[:, first]) / 2)


def test_fourier_synthesis_writes_into_a_low_precision_output():
    shape = (6, 20)
    spectrum = torch.randn(3, *shape)
    half = fourier.even_half_positions(shape).reshape(2, -1)
    flat = spectrum.reshape(3, -1)
    halves = ((flat[:, half[0]] + flat[:, half[1]]) / 2).view(3, *fourier.half_shape(shape))
    out = torch.empty(3, *shape, dtype=torch.bfloat16)
    assert fourier.synthesise_even(halves, shape, out) is out
    torch.testing.assert_close(out, fourier.ifft2_real(spectrum).to(torch.bfloat16))


def test_omega_digest_is_the_checksum_of_omega():
    layout = layout_for(FAST[0], 11, 0.6, (8, 64))
    assert omega_digest(11, layout.spectral_shape, layout.k) == omega_checksum(layout.positions)


def test_clear_caches_forgets_tables():
    layout = layout_for(FAST[1], 3, 0.6, (8, 64))
    materialise(torch.zeros(layout.k), layout)
    omega_digest(layout.seed, layout.spectral_shape, layout.k)
    assert mat._decoder.cache_info().currsize > 0 and omega_digest.cache_info().currsize > 0
    mat.clear_caches()
    assert mat._decoder.cache_info().currsize == 0 and omega_digest.cache_info().currsize == 0


def test_benchmark_quick_smoke(tmp_path):
    out = tmp_path / "decode.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--quick", "--bases", "haar,fourier",
         "--bits", "none,4", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    records = json.loads(out.read_text())
    assert records == last["results"]
    assert [(r["basis"], r["bits"]) for r in records] == [("haar", None), ("haar", 4), ("fourier", None), ("fourier", 4)]
    for r in records:
        for field in ("decode_ms", "copy_ms", "dense_load_ms", "cold_decode_ms"):
            assert np.isfinite(r[field]) and r[field] > 0
        assert r["device"] == "cpu" and r["coef_bytes"] < r["dense_bytes"]
    assert records[1]["coef_bytes"] < records[0]["coef_bytes"] / 6  # int4 values + scales vs float32


def test_benchmark_refuses_bad_bits(capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks import decode

    with pytest.raises(SystemExit):
        decode.main(["--bits", "none,3"])
    assert "--bits none,3: bits=3: expected 8 or 4" in capsys.readouterr().err
