"""The adjoint of decoding: matrix gradients -> coefficient gradients, without autograd.

Decoding is linear, c -> S c = crop(inverse(scatter_Omega(c))), so the gradient of a loss with
respect to the coefficients is S^T g for the matrix gradient g:

    adjoint(g: (..., m, n), layout) -> (..., k)  =  gather_Omega(inverse^T(pad(g)))

inverse^T per basis, each a pass or two over g (where autograd replays the inverse's ops
backwards, with their zero fills, index scatters and unfold overlap-adds):

    Haar          the same 2x2 butterfly (the block transform is symmetric and orthonormal)
    fourier       the orthonormal Hartley transform (symmetric and its own inverse): one rfft2
    fourier-real  Re(fft2(g)) / (M N)   (x = Re(ifft2(S)) of a real S, "backward" norm)
    any wavelet   the separable synthesis transposed: the long axis' block-Toeplitz GEMM with the
                  block transposed (its window overlaps added back), then the short axis' GEMM

`tests/spectral/test_adjoint.py` pins every basis to autograd's vector-Jacobian product through
`materialise_reference` (odd shapes, every pywt discrete wavelet family).
"""

from __future__ import annotations

import torch

from . import fourier, wavelet
from .materialise import MatrixLayout, gather_coefficients


def _pad_to(g: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    m, n = g.shape[-2:]
    return torch.nn.functional.pad(g, (0, shape[1] - n, 0, shape[0] - m)) if (m, n) != shape else g


def haar_analysis(x: torch.Tensor) -> torch.Tensor:
    """(..., 2h, 2w) -> (..., 2h, 2w) tile [[LL, LH], [HL, HH]]: the transpose (and inverse) of
    `training.decode.haar_inverse` before its crop."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    blocks = x.reshape(*x.shape[:-2], h, 2, w, 2)
    a, b = blocks[..., 0, :, 0], blocks[..., 0, :, 1]
    c, d = blocks[..., 1, :, 0], blocks[..., 1, :, 1]
    s, t, u, v = a + b, a - b, c + d, c - d
    return wavelet.tile_bands((s + u) * 0.5, (s - u) * 0.5, (t + v) * 0.5, (t - v) * 0.5)


def _synthesise_last_adjoint(g: torch.Tensor, name: str, h: int) -> torch.Tensor:
    """(R, length) -> (R, 2, h): the transpose of `wavelet._synthesise_last` with h inputs."""
    block = wavelet._BLOCK
    half = wavelet.filter_length(name) // 2
    window = block + half - 1
    rows, length = g.shape
    blocks = -(-length // (2 * block))
    need = blocks * block + half - 1
    padded = torch.nn.functional.pad(g, (0, blocks * 2 * block - length))
    synthesis = wavelet._block_synthesis(name, str(g.device), g.dtype)  # (2 window, 2 block)
    windows = (padded.reshape(-1, 2 * block) @ synthesis.T).reshape(rows, blocks, 2, window).transpose(1, 2)
    # Overlap-add: window j covers inputs j*block .. j*block + window - 1; add it in slices of
    # `block` inputs, each slice one strided view of every window at once.
    shifts = -(-window // block)
    out = torch.zeros(rows, 2, (blocks + shifts) * block, dtype=g.dtype, device=g.device)
    for shift in range(shifts):
        piece = windows[..., shift * block : min((shift + 1) * block, window)]
        target = out[..., shift * block : (shift + blocks) * block].unflatten(-1, (blocks, block))
        target[..., : piece.shape[-1]] += piece
    out = out[..., :need]
    return out[..., :h] if need >= h else torch.nn.functional.pad(out, (0, h - need))


def separable_adjoint(g: torch.Tensor, name: str, spectral_shape: tuple[int, int]) -> torch.Tensor:
    """(..., m, n) -> (..., M, N): the transpose of `wavelet.separable_idwt2`."""
    m, n = g.shape[-2:]
    tall = m > n
    if tall:
        g = g.mT
    short, long = g.shape[-2:]
    lead = g.shape[:-2]
    rows, cols = (spectral_shape[1], spectral_shape[0]) if tall else spectral_shape  # oriented (2 rows', 2 w)
    w = cols // 2
    pairs = _synthesise_last_adjoint(g.reshape(-1, long), name, w)  # (lead * short, 2, w)
    columns = pairs.reshape(*lead, short, 2 * w)
    synthesis = wavelet._short_synthesis(name, rows // 2, short, str(g.device), g.dtype)  # (short, rows)
    oriented = synthesis.T @ columns  # (..., rows, 2 w)
    ll, hl, lh, hh = wavelet.split_bands(oriented)
    spectrum = wavelet.tile_bands(ll, lh, hl, hh)
    return spectrum.mT if tall else spectrum


def adjoint(g: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """(..., m, n) matrix gradients -> (..., k) coefficient gradients (float32/64 as given)."""
    if tuple(g.shape[-2:]) != layout.shape:
        raise ValueError(f"expected (..., {layout.shape[0]}, {layout.shape[1]}) gradients, got {tuple(g.shape)}")
    g = g if g.dtype in (torch.float32, torch.float64) else g.float()
    basis = layout.basis
    if basis.name == "fourier":
        flat = g.reshape(-1, *layout.shape)
        spectrum = fourier.hartley_fast(flat.contiguous()).view(*g.shape)
    elif basis.name == "fourier-real":
        M, N = layout.spectral_shape
        spectrum = torch.fft.fft2(g).real / (M * N)
    elif basis.wavelet in ("haar", "db1"):
        spectrum = haar_analysis(_pad_to(g, layout.spectral_shape))
    else:
        spectrum = separable_adjoint(g, basis.wavelet, layout.spectral_shape)
    return gather_coefficients(spectrum, layout)
