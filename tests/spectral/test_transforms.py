"""The spectral layout and inverse transforms, against pywt and numpy.fft (independent code)."""

import numpy as np
import pytest
import pywt
import torch

from selora_serve.spectral import fourier, wavelet
from selora_serve.spectral.basis import Basis

WAVELETS = ["haar", "db4", "bior2.2", "coif1"]
SHAPES = [(8, 64), (7, 33), (32, 96), (96, 32), (1, 5)]


def _bands(spectrum: np.ndarray):
    h, w = spectrum.shape[-2] // 2, spectrum.shape[-1] // 2
    return spectrum[..., :h, :w], (spectrum[..., :h, w:], spectrum[..., h:, :w], spectrum[..., h:, w:])


@pytest.mark.parametrize("name", WAVELETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_wavelet_inverse_equals_pywt(name, shape):
    M, N = wavelet.spectral_shape(shape, name)
    spectrum = np.random.default_rng(0).standard_normal((3, M, N))
    ll, details = _bands(spectrum)
    expected = pywt.idwt2((ll, details), name)[..., : shape[0], : shape[1]]
    got = wavelet.idwt2(torch.from_numpy(spectrum), name, shape)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("name", WAVELETS + ["sym3", "bior3.5"])
@pytest.mark.parametrize("shape", SHAPES + [(14, 3), (300, 8), (8, 300)])
def test_separable_inverse_equals_pywt(name, shape):
    """The GEMM form (block-Toeplitz along the long side, batched) is pywt's idwt2, any shape."""
    M, N = wavelet.spectral_shape(shape, name)
    spectrum = np.random.default_rng(1).standard_normal((2, 3, M, N))
    ll, details = _bands(spectrum)
    expected = pywt.idwt2((ll, details), name)[..., : shape[0], : shape[1]]
    got = wavelet.separable_idwt2(torch.from_numpy(spectrum), name, shape)
    assert got.shape == (2, 3, *shape)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("name", WAVELETS)
def test_layout_matches_pywt_band_names(name):
    # The spectral matrix of dwt2(X) holds pywt's cA, cH, cV, cD at [[LL, LH], [HL, HH]].
    x = np.random.default_rng(1).standard_normal((16, 40))
    ca, (ch, cv, cd) = pywt.dwt2(x, name, mode="symmetric")
    spectrum = wavelet.dwt2(torch.from_numpy(x), name).numpy()
    h, w = ca.shape
    assert spectrum.shape == (2 * h, 2 * w) == wavelet.spectral_shape(x.shape, name)
    np.testing.assert_allclose(spectrum[:h, :w], ca, atol=1e-12)
    np.testing.assert_allclose(spectrum[:h, w:], ch, atol=1e-12)
    np.testing.assert_allclose(spectrum[h:, :w], cv, atol=1e-12)
    np.testing.assert_allclose(spectrum[h:, w:], cd, atol=1e-12)
    # and the inverse reconstructs X (perfect reconstruction, cropped)
    back = wavelet.idwt2(torch.from_numpy(spectrum), name, x.shape).numpy()
    np.testing.assert_allclose(back, x, atol=1e-10)


def test_subband_sizes():
    assert wavelet.spectral_shape((32, 4096), "haar") == (32, 4096)
    assert wavelet.spectral_shape((32, 4096), "db4") == (38, 4102)  # (n + 8 - 1) // 2 per band
    assert wavelet.spectral_shape((7, 33), "haar") == (8, 34)


@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_haar_equals_ptwt_fp32(shape):
    M, N = wavelet.spectral_shape(shape, "haar")
    spectrum = torch.randn(4, M, N)
    torch.testing.assert_close(wavelet.haar_idwt2(spectrum, shape), wavelet.idwt2(spectrum, "haar", shape), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_fourier_inverse_equals_numpy(shape):
    spectrum = np.random.default_rng(2).standard_normal((2, *shape))
    expected = np.fft.ifft2(spectrum).real
    np.testing.assert_allclose(fourier.ifft2_real(torch.from_numpy(spectrum)).numpy(), expected, atol=1e-12)
    got32 = fourier.ifft2_real_fast(torch.from_numpy(spectrum).float()).numpy()
    np.testing.assert_allclose(got32, expected, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_hartley_equals_its_definition_and_is_orthonormal(shape):
    from .test_materialise import hartley_by_definition

    spectrum = np.random.default_rng(3).standard_normal((2, *shape))
    got = fourier.hartley(torch.from_numpy(spectrum)).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], hartley_by_definition(spectrum[i]), atol=1e-10)
    # Orthonormal and its own inverse: norms are kept, applying it twice is the identity.
    np.testing.assert_allclose(np.linalg.norm(got, axis=(1, 2)), np.linalg.norm(spectrum, axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(fourier.hartley(torch.from_numpy(got)).numpy(), spectrum, atol=1e-10)
    fast = fourier.hartley_fast(torch.from_numpy(spectrum).float()).numpy()
    np.testing.assert_allclose(fast, got, atol=1e-5)


def test_hartley_forward_is_exact_for_any_matrix():
    x = torch.randn(6, 10, dtype=torch.float64)
    basis = Basis("fourier")
    torch.testing.assert_close(basis.inverse_reference(basis.forward(x), x.shape), x)


def test_fourier_forward_gives_even_part():
    x = torch.randn(6, 10, dtype=torch.float64)
    even = (x + torch.roll(torch.flip(x, (0, 1)), (1, 1), (0, 1))) / 2
    torch.testing.assert_close(fourier.ifft2_real(fourier.fft2_real(x)), even)


def test_basis_validation():
    with pytest.raises(ValueError, match="unknown basis 'dct'"):
        Basis("dct")
    with pytest.raises(ValueError, match="unknown wavelet 'db99'"):
        Basis("wavelet", "db99")
    with pytest.raises(ValueError, match="needs a wavelet"):
        Basis("wavelet", None)
    assert Basis("fourier").label == "fourier" and Basis("wavelet", "db4").label == "wavelet/db4"
    with pytest.raises(ValueError, match="basis 'fourier-real' takes no wavelet"):
        Basis("fourier-real", "haar")
