"""The spectral basis of an adapter: which inverse transform turns a spectrum into A or B.

`Basis.inverse` is the fast path used in serving; `Basis.inverse_reference` is the plain
implementation every fast path is tested against (ptwt for wavelets, complex ifft2 for Fourier).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fourier, wavelet

BASES = ("wavelet", "fourier")


@dataclass(frozen=True)
class Basis:
    name: str
    wavelet: str | None = None

    def __post_init__(self) -> None:
        if self.name not in BASES:
            raise ValueError(f"unknown basis {self.name!r}: expected one of {', '.join(BASES)}")
        if self.name == "wavelet":
            if self.wavelet is None:
                raise ValueError("basis 'wavelet' needs a wavelet name, e.g. 'haar'")
            wavelet.validate_wavelet(self.wavelet)
        elif self.wavelet is not None:
            raise ValueError(f"basis 'fourier' takes no wavelet, got {self.wavelet!r}")

    @property
    def label(self) -> str:
        return self.name if self.name == "fourier" else f"wavelet/{self.wavelet}"

    def spectral_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.name == "fourier":
            return fourier.spectral_shape(shape)
        return wavelet.spectral_shape(shape, self.wavelet)

    def inverse(self, spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(..., M, N) spectrum -> (..., m, n) matrix, fastest available path (float32/64)."""
        if self.name == "fourier":
            return fourier.ifft2_real_fast(spectrum)
        if self.wavelet in ("haar", "db1"):
            return wavelet.haar_idwt2(spectrum, shape)
        return wavelet.idwt2(spectrum, self.wavelet, shape)

    def inverse_reference(self, spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if self.name == "fourier":
            return fourier.ifft2_real(spectrum)
        return wavelet.idwt2(spectrum, self.wavelet, shape)

    def forward(self, matrix: torch.Tensor) -> torch.Tensor:
        """(..., m, n) -> (..., M, N): the spectrum whose inverse best matches `matrix`
        when nothing is masked (exact for wavelets; the even part for Fourier)."""
        if self.name == "fourier":
            return fourier.fft2_real(matrix)
        return wavelet.dwt2(matrix, self.wavelet)
