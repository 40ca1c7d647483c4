"""Materialisation against an independent construction (numpy scatter + pywt / numpy.fft)."""

import numpy as np
import pytest
import pywt
import torch

from selora_serve.spectral.basis import Basis
from selora_serve.spectral.init import init_coefficients
from selora_serve.spectral.materialise import (
    gather_coefficients,
    gather_spectrum,
    layout_for,
    materialise,
    materialise_reference,
    scatter_spectrum,
)
from selora_serve.spectral.omega import omega

BASES = [Basis("wavelet", "haar"), Basis("wavelet", "db4"), Basis("wavelet", "bior2.2"), Basis("wavelet", "coif1"),
         Basis("fourier"), Basis("fourier-real")]


def hartley_by_definition(spectrum: np.ndarray) -> np.ndarray:
    """X[p, q] = sum F[u, v] cas(2 pi (u p / m + v q / n)) / sqrt(m n), cas = cos + sin (FORMAT.md 5)."""
    m, n = spectrum.shape
    u, p = np.arange(m).reshape(m, 1, 1, 1), np.arange(m).reshape(1, 1, m, 1)
    v, q = np.arange(n).reshape(1, n, 1, 1), np.arange(n).reshape(1, 1, 1, n)
    angle = 2 * np.pi * (((u * p) % m) / m + ((v * q) % n) / n)
    return np.einsum("uv,uvpq->pq", spectrum, np.cos(angle) + np.sin(angle)) / np.sqrt(m * n)


def _independent(coef: np.ndarray, basis: Basis, seed: int, shape, eta) -> np.ndarray:
    k = coef.shape[-1]
    M, N = basis.spectral_shape(shape)
    spectrum = np.zeros(M * N)
    spectrum[omega(seed, (M, N), k)] = coef
    spectrum = spectrum.reshape(M, N)
    if basis.name == "fourier":
        return hartley_by_definition(spectrum)
    if basis.name == "fourier-real":
        return np.fft.ifft2(spectrum).real
    h, w = M // 2, N // 2
    bands = (spectrum[:h, :w], (spectrum[:h, w:], spectrum[h:, :w], spectrum[h:, w:]))
    return pywt.idwt2(bands, basis.wavelet)[: shape[0], : shape[1]]


@pytest.mark.parametrize("basis", BASES, ids=lambda b: b.label)
@pytest.mark.parametrize("shape", [(8, 64), (64, 8), (7, 33)])
def test_materialise_equals_independent_reference(basis, shape):
    layout = layout_for(basis, 11, 0.6, shape)
    coef = torch.randn(3, layout.k, dtype=torch.float64)
    fast = materialise(coef, layout)
    ref = materialise_reference(coef, layout)
    for i in range(3):
        expected = _independent(coef[i].numpy(), basis, 11, shape, 0.6)
        np.testing.assert_allclose(ref[i].double().numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(fast[i].double().numpy(), expected, atol=1e-6)
    assert fast.dtype == torch.float32 and fast.shape == (3, *shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output_is_the_cast_fp32_result(dtype):
    layout = layout_for(Basis("wavelet", "haar"), 0, 0.6, (8, 64))
    coef = torch.randn(2, layout.k)
    torch.testing.assert_close(materialise(coef, layout, dtype), materialise(coef, layout).to(dtype))


def test_gather_equals_scatter_and_adjoint():
    layout = layout_for(Basis("fourier"), 5, 0.3, (16, 24))
    coef = torch.randn(4, layout.k)
    torch.testing.assert_close(gather_spectrum(coef, layout), scatter_spectrum(coef, layout))
    torch.testing.assert_close(gather_coefficients(scatter_spectrum(coef, layout), layout), coef)


def test_wrong_coefficient_count_is_refused():
    layout = layout_for(Basis("wavelet", "haar"), 0, 0.6, (8, 64))
    with pytest.raises(ValueError, match=f"expected {layout.k} coefficients"):
        materialise(torch.zeros(layout.k + 1), layout)


@pytest.mark.parametrize("basis", BASES, ids=lambda b: b.label)
def test_init_matches_auxiliary_kaiming_variance(basis):
    shape = (16, 256)
    layout = layout_for(basis, 0, 0.6, shape)
    gen = torch.Generator().manual_seed(0)
    values = torch.stack([materialise(init_coefficients(layout, gen), layout) for _ in range(4)])
    # Kaiming-uniform(a=sqrt(5)) has variance 1 / (3 fan_in); each A matches its own auxiliary
    # draw's empirical variance exactly, which is within a few percent of that.
    target = 1.0 / (3 * shape[1])
    assert values.var(dim=(1, 2)).sub(target).abs().max() < 0.05 * target
