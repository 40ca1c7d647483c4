"""The hand-written adjoint of decoding equals autograd's vector-Jacobian product."""

import pytest
import pywt
import torch

from selora_serve.spectral.adjoint import adjoint
from selora_serve.spectral.basis import Basis
from selora_serve.spectral.materialise import layout_for, scatter_spectrum

# one of every pywt discrete family, the short and the longest filters included
WAVELETS = ["haar", "db4", "db20", "sym5", "coif3", "bior2.2", "rbio3.1", "dmey"]
SHAPES = [(8, 128), (128, 8), (32, 40), (7, 13), (13, 7), (1, 1), (2, 96)]


def _vjp(g: torch.Tensor, layout) -> torch.Tensor:
    c = torch.zeros(*g.shape[:-2], layout.k, dtype=torch.float64, requires_grad=True)
    # materialise_reference in float64 (it computes in float32)
    matrix = layout.basis.inverse_reference(scatter_spectrum(c, layout), layout.shape)
    (grad,) = torch.autograd.grad(matrix, c, g)
    return grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("basis", [Basis("fourier"), Basis("fourier-real")] + [Basis("wavelet", w) for w in WAVELETS],
                         ids=lambda b: b.label)
def test_adjoint_is_the_vector_jacobian_product(basis, shape):
    layout = layout_for(basis, 5, 0.4, shape)
    g = torch.randn(3, *shape, dtype=torch.float64)
    expected = _vjp(g, layout)
    got = adjoint(g, layout)
    assert got.shape == (3, layout.k) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    # float32 in, float32 out, single matrices too
    torch.testing.assert_close(adjoint(g[0].float(), layout), expected[0].float(), atol=1e-4, rtol=1e-4)


def test_every_discrete_family_is_covered():
    assert {pywt.Wavelet(w).short_family_name for w in WAVELETS} == set(pywt.families(short=True)) - {"gaus", "mexh", "morl", "cgau", "shan", "fbsp", "cmor"}


def test_adjoint_names_a_wrong_shape():
    layout = layout_for(Basis("wavelet", "haar"), 0, 0.5, (4, 6))
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 4, 6\) gradients, got \(4, 5\)"):
        adjoint(torch.zeros(4, 5), layout)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", WAVELETS)
def test_compiled_adjoint_equals_the_plain_one(name, shape, threads):
    from selora_serve.spectral import fused

    layout = layout_for(Basis("wavelet", name), 2, 0.4, shape)
    g = torch.randn(5, *shape)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # rows split over two threads write disjoint rows
    try:
        got = fused.adjoint_stacked(g, layout)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, adjoint(g.double(), layout).float(), atol=2e-5, rtol=1e-5)


def test_compiled_adjoint_refuses_what_it_does_not_cover():
    from selora_serve.spectral import fused

    with pytest.raises(ValueError, match="wavelet layouts only, got fourier"):
        fused.adjoint_stacked(torch.zeros(1, 4, 6), layout_for(Basis("fourier"), 0, 0.5, (4, 6)))
    with pytest.raises(ValueError, match=r"expected \(B, 4, 6\) gradients, got \(4, 6\)"):
        fused.adjoint_stacked(torch.zeros(4, 6), layout_for(Basis("wavelet", "haar"), 0, 0.5, (4, 6)))
    assert fused.adjoint_stacked(torch.zeros(0, 4, 6), layout_for(Basis("wavelet", "haar"), 0, 0.5, (4, 6))).shape == (0, 12)
