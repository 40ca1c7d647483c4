"""SeLoRA-F's transform: A = Re(ifft2(F)) with torch's default ("backward") normalisation.

The spectral matrix has the spatial shape (m, n) and real entries. Because F is real,
Re(ifft2(F)) = ifft2(E) with E = (F + F[-u mod m, -v mod n]) / 2 real and even, hence Hermitian:
the fast path feeds E's non-redundant half to a complex-to-real inverse, half the work of a
complex `ifft2`. The half is taken along the longer axis (`half_axis`): the C2R pass then runs
along it and the complex pass along the short one (for LoRA's r = 32 sides, about 2x faster
than halving a short axis). Both terms of E are plain gathers of F (`even_half_positions`), so
a caller holding only F's nonzero entries can gather them straight from its coefficients.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def spectral_shape(shape: tuple[int, int]) -> tuple[int, int]:
    return (int(shape[0]), int(shape[1]))


def ifft2_real(spectrum: torch.Tensor) -> torch.Tensor:
    """Reference inverse: Re(ifft2(F)) over the last two dims."""
    return torch.fft.ifft2(spectrum.float() if spectrum.dtype not in (torch.float32, torch.float64) else spectrum).real


def half_axis(shape: tuple[int, int]) -> int:
    """The axis along which E's half spectrum is kept: -1 (columns) unless rows are longer."""
    m, n = shape
    return -1 if n >= m else -2


def half_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Shape of E's half spectrum: (m, n // 2 + 1), or (m // 2 + 1, n) when m > n."""
    m, n = shape
    return (m, n // 2 + 1) if half_axis(shape) == -1 else (m // 2 + 1, n)


def even_half_positions(shape: tuple[int, int]) -> np.ndarray:
    """(2, *half_shape(shape)) flat positions in an (m, n) spectrum: [0] of (u, v), [1] of (-u, -v).

    E's half spectrum is (F[positions[0]] + F[positions[1]]) / 2.
    """
    m, n = shape
    rows, cols = half_shape(shape)
    u = np.arange(rows).reshape(rows, 1)
    v = np.arange(cols).reshape(1, cols)
    return np.stack([u * n + v, ((-u) % m) * n + (-v) % n])


def irfft2_even_half(
    pairs: torch.Tensor,
    shape: tuple[int, int],
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """(..., 2, *half_shape(shape)) real pairs, already halved -> (..., m, n) float matrix.

    `pairs` holds F[u, v] / 2 and F[-u, -v] / 2 (gathered by `even_half_positions`), so their sum
    is E's half spectrum. `buffer` (..., *half_shape(shape), 2) is the complex input, viewed as
    real pairs; its imaginary part must be zero and stays zero (torch.fft does not write its
    input), so a caller decoding many chunks allocates and zeroes it once. The result is a new
    tensor: torch's CPU FFT with out= computes into a temporary and copies.
    """
    first, second = pairs.select(-3, 0), pairs.select(-3, 1)
    if buffer is None:
        buffer = torch.zeros(*first.shape, 2, dtype=pairs.dtype, device=pairs.device)
    torch.add(first, second, out=buffer.select(-1, 0))
    spectrum = torch.view_as_complex(buffer)
    m, n = shape
    if half_axis(shape) == -1:
        return torch.fft.irfft2(spectrum, s=(m, n))
    return torch.fft.irfftn(spectrum, s=(n, m), dim=(-1, -2))


@lru_cache(maxsize=64)
def _even_half_index(shape: tuple[int, int], device: str) -> torch.Tensor:
    return torch.from_numpy(even_half_positions(shape).reshape(-1)).to(device)


def ifft2_real_fast(spectrum: torch.Tensor) -> torch.Tensor:
    """Equal to `ifft2_real` (up to rounding), through irfft2 of the Hermitian-even part."""
    if spectrum.dtype not in (torch.float32, torch.float64):
        spectrum = spectrum.float()
    m, n = spectrum.shape[-2:]
    lead = spectrum.shape[:-2]
    index = _even_half_index((m, n), str(spectrum.device))
    pairs = spectrum.reshape(*lead, m * n).index_select(-1, index).mul_(0.5)
    return irfft2_even_half(pairs.view(*lead, 2, *half_shape((m, n))), (m, n))


def fft2_real(matrix: torch.Tensor) -> torch.Tensor:
    """Forward transform: Re(fft2(X)), the real spectrum whose inverse is X's even part."""
    return torch.fft.fft2(matrix).real
