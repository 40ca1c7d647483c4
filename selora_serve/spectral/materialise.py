"""Coefficients -> dense matrices: the pure function at the heart of serving.

A `MatrixLayout` fixes everything about one matrix shape in one adapter: basis, seed, spatial
shape (m, n), spectral shape (M, N), k and Omega. Every matrix of that shape in the adapter
shares it, so materialisation is batched per layout:

    materialise(coef: (..., k), layout) -> (..., m, n)
    materialise_rows(B rows (k,) or (B, k), layout) -> (B, m, n)       (rows need not be stacked)
    materialise_chunks(B rows, layout) -> [(c, m, n), ...]             (concatenation: the above)

`materialise_reference` is the plain version (scatter into zeros, reference inverse) that the
fast path is tested against. Inverses run in float32 (ptwt and the FFT want it); the result is
cast to the requested dtype at the end.

The fast path never builds the spectrum. Per (layout, device) a `_Decoder` holds one index table
that maps each slot of the transform's input, in the order the transform wants it, to its
coefficient (or to a zero pad when masked): Haar's block order (`wavelet.haar_block_positions`),
Fourier's even half-spectrum pairs (`fourier.even_half_positions`), the other wavelets'
`wavelet.oriented_layout` (short side's bands by rows, then two GEMMs: `synthesise_oriented`).
Decoding is then, per chunk of matrices: copy the coefficients into a padded
buffer, one `index_select`, the transform (Haar's butterfly writes straight into the output).
On CPU chunks are sized to stay in cache, so the only full-size memory traffic is the output;
on other devices one chunk covers the batch. The tables are built on first use and cached
(`clear_caches` empties them, for cold timings). Chunk sizes change the speed, not the
results (beyond float32 rounding in the FFT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from . import fourier, wavelet
from .basis import Basis
from .omega import _omega_cached, num_coefficients, omega, omega_digest


@dataclass(frozen=True)
class MatrixLayout:
    basis: Basis
    seed: int
    shape: tuple[int, int]
    eta: float
    spectral_shape: tuple[int, int] = field(init=False)
    k: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta < 1.0:
            raise ValueError(f"eta must be in [0, 1), got {self.eta}")
        m, n = self.shape
        if m < 1 or n < 1:
            raise ValueError(f"matrix shape must be positive, got {self.shape}")
        object.__setattr__(self, "spectral_shape", self.basis.spectral_shape(self.shape))
        object.__setattr__(self, "k", num_coefficients(self.eta, self.shape))

    @property
    def positions(self) -> np.ndarray:
        """Omega: sorted flat positions in the (M, N) spectrum."""
        return omega(self.seed, self.spectral_shape, self.k)


@lru_cache(maxsize=256)
def layout_for(basis: Basis, seed: int, eta: float, shape: tuple[int, int]) -> MatrixLayout:
    return MatrixLayout(basis, int(seed), (int(shape[0]), int(shape[1])), float(eta))


@lru_cache(maxsize=256)
def _positions_tensor(layout: MatrixLayout, device: str) -> torch.Tensor:
    return torch.from_numpy(np.array(layout.positions)).to(device)


@lru_cache(maxsize=256)
def _gather_index(layout: MatrixLayout, device: str) -> torch.Tensor:
    """For each spectral position, the index of its coefficient, or k (a zero pad) if masked.

    Gathering (rather than scattering into zeros) writes the spectrum in one sequential pass,
    and because Omega is sorted the reads of the coefficients are sequential too.
    """
    M, N = layout.spectral_shape
    index = np.full(M * N, layout.k, dtype=np.int64)
    index[layout.positions] = np.arange(layout.k, dtype=np.int64)
    return torch.from_numpy(index).to(device)


def _check_coefficients(coef: torch.Tensor, layout: MatrixLayout) -> None:
    if coef.shape[-1] != layout.k:
        raise ValueError(
            f"expected {layout.k} coefficients for a {layout.shape} matrix at eta={layout.eta}, "
            f"got {coef.shape[-1]}"
        )


def scatter_spectrum(coef: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """Reference: (..., k) coefficients -> (..., M, N) spectrum, zeros off Omega."""
    _check_coefficients(coef, layout)
    M, N = layout.spectral_shape
    spectrum = torch.zeros(*coef.shape[:-1], M * N, dtype=coef.dtype, device=coef.device)
    spectrum[..., _positions_tensor(layout, str(coef.device))] = coef
    return spectrum.reshape(*coef.shape[:-1], M, N)


def gather_spectrum(coef: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """Fast path of `scatter_spectrum` (same result)."""
    _check_coefficients(coef, layout)
    M, N = layout.spectral_shape
    padded = torch.nn.functional.pad(coef, (0, 1))
    spectrum = padded.index_select(-1, _gather_index(layout, str(coef.device)))
    return spectrum.reshape(*coef.shape[:-1], M, N)


def gather_coefficients(spectrum: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """(..., M, N) spectrum -> (..., k): its entries on Omega (adjoint of `scatter_spectrum`)."""
    flat = spectrum.reshape(*spectrum.shape[:-2], -1)
    # index_select: ~5x faster than advanced indexing on CPU (the training adjoint's last step)
    return flat.index_select(-1, _positions_tensor(layout, str(spectrum.device)))


def materialise_reference(coef: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """(..., k) -> (..., m, n) in float32 through the reference inverse transform."""
    spectrum = scatter_spectrum(coef.float(), layout)
    return layout.basis.inverse_reference(spectrum, layout.shape)


# Matrices per chunk on CPU: about this many output entries (8 MB in fp32), so that a chunk's
# gathered input, scratch and output stay in cache and only the output goes out to memory.
# (Measured on 2 EPYC cores: 1 << 19 and 1 << 21 are within noise for Haar; the FFT prefers
# the larger batches.)
_CPU_CHUNK_ENTRIES = 1 << 21
# Elsewhere (CUDA), one chunk per batch up to this size: kernel launches, not caches, dominate.
_DEVICE_CHUNK_ENTRIES = 1 << 26


class _Decoder:
    """Decodes padded coefficient rows of one layout on one device (see the module docstring).

    `index[s]` is the coefficient feeding input slot s of `finish`, or k (the zero pad);
    `coef_scale` is folded into the coefficients as they are copied in.
    """

    coef_scale = 1.0

    def __init__(self, layout: MatrixLayout, device: str, positions: np.ndarray | None = None):
        self.layout = layout
        spectrum_index = _gather_index(layout, device)
        self.index = (
            spectrum_index
            if positions is None
            else spectrum_index[torch.from_numpy(positions.reshape(-1)).to(device)]
        )

    def scratch(self, rows: int, device: str) -> tuple[torch.Tensor, ...]:
        """Per-call buffers for chunks of up to `rows` matrices, reused across chunks."""
        return ()

    def finish(
        self,
        gathered: torch.Tensor,
        scratch: tuple[torch.Tensor, ...],
        out: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """(c, len(index)) gathered inputs -> (c, m, n) matrices, written to `out` if given,
        else to a new tensor of `dtype`; returns it."""
        raise NotImplementedError

    def _new(self, gathered: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(gathered.shape[0], *self.layout.shape, dtype=dtype, device=gathered.device)


class _HaarDecoder(_Decoder):
    coef_scale = 0.5  # pywt's Haar synthesis is butterfly / 2

    def __init__(self, layout: MatrixLayout, device: str):
        super().__init__(layout, device, wavelet.haar_block_positions(layout.spectral_shape))
        rows, cols = layout.spectral_shape
        self.blocks = (rows // 2, 2, cols // 2, 2)
        # Odd sides: the butterfly fills (rows, cols) and the output is its top-left crop.
        self.direct = layout.shape == (rows, cols)

    def scratch(self, rows: int, device: str) -> tuple[torch.Tensor, ...]:
        count = 1 if self.direct else 2
        return tuple(torch.empty(rows, *self.blocks, device=device) for _ in range(count))

    def finish(self, gathered, scratch, out, dtype):
        c = gathered.shape[0]
        out = self._new(gathered, dtype) if out is None else out
        blocks = gathered.view(c, *self.blocks)
        if self.direct:
            wavelet.haar_butterfly(blocks, out.view(c, *self.blocks), scratch[0][:c])
        else:
            full = wavelet.haar_butterfly(blocks, scratch[1][:c], scratch[0][:c])
            m, n = self.layout.shape
            out.copy_(full.view(c, *self.layout.spectral_shape)[..., :m, :n])
        return out


class _FourierDecoder(_Decoder):
    # E = (F + F[-u, -v]) / 2: the 1/2 is applied by the synthesis matrix, not to the inputs

    def __init__(self, layout: MatrixLayout, device: str):
        super().__init__(layout, device, fourier.even_half_positions(layout.shape))
        self.half = fourier.half_shape(layout.shape)

    def scratch(self, rows: int, device: str) -> tuple[torch.Tensor, ...]:
        return (torch.empty(rows, *self.half, device=device),)

    def finish(self, gathered, scratch, out, dtype):
        c = gathered.shape[0]
        pairs = gathered.view(c, 2, *self.half)
        half = torch.add(pairs[:, 0], pairs[:, 1], out=scratch[0][:c])
        target = self._new(gathered, dtype) if out is None else out
        return fourier.synthesise_even(half, self.layout.shape, target, scale=0.5)


class _HartleyDecoder(_Decoder):
    """`fourier`: the gathered spectrum through one rfft2 (`fourier.hartley_fast`)."""

    def finish(self, gathered, scratch, out, dtype):
        spectrum = gathered.view(gathered.shape[0], *self.layout.spectral_shape)
        return fourier.hartley_fast(spectrum, self._new(gathered, dtype) if out is None else out)


class _WaveletDecoder(_Decoder):
    """Any other wavelet: gathered straight into `wavelet.oriented_layout`, then its two GEMMs."""

    def __init__(self, layout: MatrixLayout, device: str):
        rows, cols = layout.spectral_shape
        flat = torch.arange(rows * cols).view(rows, cols)
        super().__init__(layout, device, wavelet.oriented_layout(flat, layout.shape).numpy())
        m, n = layout.shape
        self.oriented = (cols, rows) if m > n else (rows, cols)
        self.transposed = m > n

    def finish(self, gathered, scratch, out, dtype):
        oriented = gathered.view(gathered.shape[0], *self.oriented)
        spatial = wavelet.synthesise_oriented(oriented, self.layout.basis.wavelet, self.layout.shape)
        out = self._new(gathered, dtype) if out is None else out
        (out.mT if self.transposed else out).copy_(spatial)
        return out


@lru_cache(maxsize=256)
def _decoder(layout: MatrixLayout, device: str) -> _Decoder:
    basis = layout.basis
    if basis.name == "fourier":
        return _HartleyDecoder(layout, device)
    if basis.name == "fourier-real":
        return _FourierDecoder(layout, device)
    if basis.wavelet in ("haar", "db1"):
        return _HaarDecoder(layout, device)
    return _WaveletDecoder(layout, device)


def clear_caches() -> None:
    """Forget every cached Omega and decoding table (to time a cold first decode)."""
    for cached in (_omega_cached, omega_digest, _positions_tensor, _gather_index, _decoder):
        cached.cache_clear()


def _chunk_rows(layout: MatrixLayout, device: torch.device) -> int:
    entries = _CPU_CHUNK_ENTRIES if device.type == "cpu" else _DEVICE_CHUNK_ENTRIES
    m, n = layout.shape
    return max(1, entries // (m * n))


def _decode(
    rows: torch.Tensor | Sequence[torch.Tensor],
    layout: MatrixLayout,
    dtype: torch.dtype,
    device: torch.device,
    out: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Decode rows chunk by chunk, into `out` (B, m, n) if given, else into one new tensor per
    chunk; returns the chunks' outputs in order."""
    count, k = len(rows), layout.k
    if isinstance(rows, torch.Tensor):
        _check_coefficients(rows, layout)
    else:
        for row in rows:
            _check_coefficients(row, layout)
    if count == 0:
        return []
    decoder = _decoder(layout, str(device))
    chunk = min(count, _chunk_rows(layout, device))
    padded = torch.zeros(chunk, k + 1, device=device)  # column k stays 0: the masked entries
    gathered = torch.empty(chunk, decoder.index.numel(), device=device)
    scratch = decoder.scratch(chunk, str(device))
    results = []
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        coef = padded[: stop - start, :k]
        if isinstance(rows, torch.Tensor):
            coef.copy_(rows[start:stop])
        else:
            for i in range(start, stop):
                coef[i - start].copy_(rows[i])
        if decoder.coef_scale != 1.0:
            coef.mul_(decoder.coef_scale)
        torch.index_select(padded[: stop - start], 1, decoder.index, out=gathered[: stop - start])
        target = None if out is None else out[start:stop]
        results.append(decoder.finish(gathered[: stop - start], scratch, target, dtype))
    return results


def _rows_device(rows: torch.Tensor | Sequence[torch.Tensor], device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(rows, torch.Tensor):
        return rows.device
    return rows[0].device if len(rows) else torch.device("cpu")


def materialise_rows(
    rows: torch.Tensor | Sequence[torch.Tensor],
    layout: MatrixLayout,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """B coefficient rows of `layout` ((B, k) tensor or B tensors (k,)) -> (B, m, n) in `dtype`.

    Rows may live on any device and in any float dtype; they are copied chunk by chunk into a
    float32 buffer on `device` (default: the rows' device), so a list of per-module tensors is
    decoded without first stacking it into one (B, k) tensor.
    """
    device = _rows_device(rows, device)
    out = torch.empty(len(rows), *layout.shape, dtype=dtype, device=device)
    _decode(rows, layout, dtype, device, out)
    return out


def materialise_chunks(
    rows: torch.Tensor | Sequence[torch.Tensor],
    layout: MatrixLayout,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> list[torch.Tensor]:
    """As `materialise_rows`, but returns the matrices as a list of (c, m, n) chunk tensors whose
    concatenation is `materialise_rows`' result.

    For callers that want the matrices one by one (an adapter's modules): each chunk is a small,
    separate allocation that the allocator recycles from freed memory, where one (B, m, n)
    tensor of hundreds of MB is a fresh mapping whose every page faults on first write, which
    costs about as much as the whole decode.
    """
    return _decode(rows, layout, dtype, _rows_device(rows, device), None)


def materialise(
    coef: torch.Tensor, layout: MatrixLayout, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(..., k) -> (..., m, n): the fast path, computed in float32, returned in `dtype`."""
    _check_coefficients(coef, layout)
    lead = coef.shape[:-1]
    out = materialise_rows(coef.reshape(-1, layout.k), layout, dtype)
    return out.view(*lead, *layout.shape)
