"""The spectral basis of an adapter: which inverse transform turns a spectrum into A or B.

`Basis.inverse` is the fast path used in serving; `Basis.inverse_reference` is the plain
implementation every fast path is tested against (ptwt for wavelets, complex ifft2 for Fourier).

    wavelet       one-level 2D DWT of a pywt wavelet (SeLoRA-W)
    fourier       the orthonormal 2D Hartley basis (SeLoRA-F; checkpoint format v2)
    fourier-real  Re(ifft2) of a real spectrum, "backward" normalisation: SeLoRA-F as format v1
                  defined it (it spans only the even matrices); v1 checkpoints read as this
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fourier, wavelet

BASES = ("wavelet", "fourier", "fourier-real")
# What new adapters may choose (`fourier-real` exists for checkpoints written as format v1).
NEW_BASES = ("wavelet", "fourier")


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
            raise ValueError(f"basis {self.name!r} takes no wavelet, got {self.wavelet!r}")

    @property
    def is_fourier(self) -> bool:
        return self.name != "wavelet"

    @property
    def label(self) -> str:
        return self.name if self.is_fourier else f"wavelet/{self.wavelet}"

    def spectral_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.is_fourier:
            return fourier.spectral_shape(shape)
        return wavelet.spectral_shape(shape, self.wavelet)

    def inverse(self, spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(..., M, N) spectrum -> (..., m, n) matrix, fastest available path (float32/64)."""
        if self.name == "fourier":
            flat = spectrum.reshape(-1, *spectrum.shape[-2:])
            return fourier.hartley_fast(fourier._float(flat)).view(*spectrum.shape[:-2], *shape)
        if self.name == "fourier-real":
            return fourier.ifft2_real_fast(spectrum)
        if self.wavelet in ("haar", "db1"):
            return wavelet.haar_idwt2(spectrum, shape)
        return wavelet.separable_idwt2(spectrum, self.wavelet, shape)

    def inverse_reference(self, spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if self.name == "fourier":
            return fourier.hartley(spectrum)
        if self.name == "fourier-real":
            return fourier.ifft2_real(spectrum)
        return wavelet.idwt2(spectrum, self.wavelet, shape)

    def forward(self, matrix: torch.Tensor) -> torch.Tensor:
        """(..., m, n) -> (..., M, N): the spectrum whose inverse best matches `matrix`
        when nothing is masked (exact for wavelets and `fourier`; the even part for
        `fourier-real`)."""
        if self.name == "fourier":
            return fourier.hartley(matrix)
        if self.name == "fourier-real":
            return fourier.fft2_real(matrix)
        return wavelet.dwt2(matrix, self.wavelet)
