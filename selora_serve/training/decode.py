"""Differentiable decoding of spectral coefficients, for training: (k,) -> (m, n) with autograd.

The serving fast path (`spectral.materialise.materialise`) writes into preallocated buffers
(out= ops), which autograd cannot follow. Training therefore decodes with plain, differentiable
tensor ops:

    Haar (the default basis)  scatter onto Omega, then the closed-form butterfly below
    other wavelets            scatter, then `wavelet.separable_idwt2` (two batched GEMMs)
    Fourier bases             `materialise_reference` (scatter, then the FFT)

Wavelets avoid ptwt's inverse, which runs on conv_transpose2d, whose CPU kernels are erratic for
these skinny shapes (1 to 40 ms for one 32 x 128 matrix in our measurements), which made a tiny
model's SeLoRA-W step ~10x slower than LoRA's. tests/training/test_layers.py pins
every path to the fast one's values and its gradient to the fast one's Jacobian.
"""

from __future__ import annotations

import torch

from ..spectral.materialise import MatrixLayout, materialise_reference, scatter_spectrum
from ..spectral.wavelet import separable_idwt2, split_bands


def haar_inverse(spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(..., 2h, 2w) Haar spectrum [[LL, LH], [HL, HH]] -> (..., m, n), pywt's idwt2 cropped.

    Each output 2x2 block is X[2i+a, 2j+b] = (LL + sa LH + sb HL + sa sb HH) / 2 with
    sa = (-1)**a, sb = (-1)**b (pywt's Haar filters; LH is cH, HL is cV).
    """
    ll, lh, hl, hh = split_bands(spectrum)
    s, t = ll + lh, ll - lh
    u, v = hl + hh, hl - hh
    top = torch.stack((s + u, s - u), dim=-1)  # rows 2i: (..., h, w, 2)
    bottom = torch.stack((t + v, t - v), dim=-1)  # rows 2i+1
    h, w = ll.shape[-2:]
    out = (torch.stack((top, bottom), dim=-3) * 0.5).reshape(*ll.shape[:-2], 2 * h, 2 * w)
    m, n = shape
    return out[..., :m, :n]


def decode(coef: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """(..., k) -> (..., m, n) float32, differentiable w.r.t. `coef`."""
    basis = layout.basis
    if basis.name == "wavelet" and basis.wavelet in ("haar", "db1"):
        return haar_inverse(scatter_spectrum(coef.float(), layout), layout.shape)
    if basis.name == "wavelet":
        return separable_idwt2(scatter_spectrum(coef.float(), layout), basis.wavelet, layout.shape)
    return materialise_reference(coef, layout)
