"""Fused CPU decode: stored coefficients (float, int8 or packed int4) -> dense matrices.

    decode_stacked(values, scales, bits, group_size, layout) -> [(c, m, n) float32, ...]
    adjoint_stacked(grad (B, m, n), layout) -> (B, k)     the transpose, for training (wavelets)

`values` holds B rows of one layout as stored: float (B, k), int8 (B, k) or packed uint8
(B, ceil(k/2)) (docs/FORMAT.md section 10: element 2j in the low nibble, two's complement),
with float32 `scales` (B, ceil(k/G)) when quantised. One compiled pass per matrix reads each
coefficient where the transform needs it, dequantises it there and writes the output once:

- wavelets (Haar included): the one-level 2D inverse DWT as two separable passes over the
  matrix. Each output t of an axis is sum_j lo[t%2 + L-2 - 2j] a[t//2 + j] + hi[...] d[...] for
  j < L/2 (pywt's full synthesis from index L - 2, i.e. its crop), so the "tables" are the two
  filters split by parity. Pass 1 gathers each band row of the spectrum from Omega's index table
  and synthesises the columns into a (2, h, n) scratch; pass 2 synthesises the rows into `out`.
- Fourier bases: the FFT stays torch's; the compiled pass replaces the gather (pad, copy,
  dequantise, index_select) feeding it (`materialise._Decoder.finish`).

Matrices are split over `torch.get_num_threads()` Python threads (the kernels release the GIL;
no numba threading layer, so nothing here cares how the process was started or forked). Kernels
are compiled on first use and cached on disk by numba; `warm_up()` compiles them ahead (an
engine calls it at start). `materialise.materialise_reference` is the oracle every path here is
tested against (tests/spectral/test_fused.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from .materialise import MatrixLayout, _chunk_rows, _decoder

FLOAT_BITS = 0  # `bits` of unquantised rows


@lru_cache(maxsize=None)
def _kernels():
    """(wavelet, haar, spread, gather): the compiled kernels (`_kernels.py`), imported on first use."""
    from . import _kernels as kernels

    return kernels.wavelet, kernels.haar, kernels.spread, kernels.gather


@lru_cache(maxsize=64)
def _filters(wavelet: str) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi), each (2, L/2) float32: tap j of an output of parity par is filter[par + L-2 - 2j]."""
    import pywt

    wav = pywt.Wavelet(wavelet)
    length = wav.dec_len
    taps = [[par + length - 2 - 2 * j for j in range(length // 2)] for par in range(2)]
    lo, hi = np.asarray(wav.rec_lo, dtype=np.float64), np.asarray(wav.rec_hi, dtype=np.float64)
    return lo[taps].astype(np.float32), hi[taps].astype(np.float32)


@lru_cache(maxsize=256)
def _positions32(layout: MatrixLayout) -> np.ndarray:
    """Omega as uint32 flat spectrum positions (sorted, so the scatter writes forward; unsigned,
    so the kernels index without numba's negative-index wrap-around)."""
    return np.ascontiguousarray(layout.positions, dtype=np.uint32)


@lru_cache(maxsize=256)
def _decoder_index32(layout: MatrixLayout) -> np.ndarray:
    return _decoder(layout, "cpu").index.numpy().astype(np.uint32)


def _threads(count: int) -> int:
    return max(1, min(torch.get_num_threads(), count))


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="selora-decode")


def _split(fn, rows_from: int, rows_to: int) -> None:
    """fn(lo, hi) over [rows_from, rows_to), split across the configured threads."""
    count = rows_to - rows_from
    threads = _threads(count)
    if threads == 1:
        fn(rows_from, rows_to)
        return
    bounds = [rows_from + count * t // threads for t in range(threads + 1)]
    futures = [_pool(threads).submit(fn, bounds[t], bounds[t + 1]) for t in range(1, threads)]
    fn(bounds[0], bounds[1])
    for future in futures:
        future.result()


def _as_arrays(values: torch.Tensor, scales: torch.Tensor | None, bits: int) -> tuple[np.ndarray, np.ndarray]:
    if bits == FLOAT_BITS:
        values = values if values.dtype == torch.float32 else values.float()
        return values.detach().numpy(), np.ones((1, 1), dtype=np.float32)
    if scales is None:
        raise ValueError(f"{bits}-bit rows need their scales")
    return values.numpy(), scales.detach().to(torch.float32).numpy()


def check_stored(values: torch.Tensor, scales: torch.Tensor | None, bits: int, group_size: int,
                 layout: MatrixLayout) -> None:
    """ValueError unless `values`/`scales` are B rows of `layout` as stored at `bits`."""
    k = layout.k
    want = {FLOAT_BITS: (k, None), 8: (k, torch.int8), 4: ((k + 1) // 2, torch.uint8)}
    if bits not in want:
        raise ValueError(f"bits={bits!r}: expected 0 (float), 8 or 4")
    length, dtype = want[bits]
    if values.dim() != 2 or values.shape[1] != length:
        raise ValueError(f"expected (B, {length}) stored values for k = {k} at {bits or 'float'} bits, "
                         f"got {tuple(values.shape)}")
    if dtype is not None and values.dtype != dtype:
        raise ValueError(f"{bits}-bit values must be {dtype}, got {values.dtype}")
    if bits != FLOAT_BITS:
        groups = -(-k // group_size)
        if scales is None or tuple(scales.shape) != (values.shape[0], groups):
            raise ValueError(f"expected ({values.shape[0]}, {groups}) scales for group size {group_size}, "
                             f"got {None if scales is None else tuple(scales.shape)}")


def decode_stacked(
    values: torch.Tensor,
    scales: torch.Tensor | None,
    bits: int,
    group_size: int,
    layout: MatrixLayout,
) -> list[torch.Tensor]:
    """B stored rows of `layout` -> float32 (c, m, n) chunks (on CPU) whose concatenation is the
    B decoded matrices. Cache-sized chunks, as `materialise.materialise_chunks`: a chunk is written
    into memory the allocator recycles (still in cache), where one adapter-sized output buffer
    measured 1.3x slower (SmolLM2 r = 32, Haar: 3.0 against 2.3 ms)."""
    check_stored(values, scales, bits, group_size, layout)
    count = values.shape[0]
    if count == 0:
        return []
    vals, scl = _as_arrays(values.cpu(), None if scales is None else scales.cpu(), bits)
    wavelet_kernel, haar_kernel, spread_kernel, gather_kernel = _kernels()
    basis, k = layout.basis, layout.k
    chunk = min(count, _chunk_rows(layout, torch.device("cpu")))
    m, n = layout.shape
    rows, cols = layout.spectral_shape
    positions = _positions32(layout)
    results = []

    def chunks(fill):
        """fill(start, a, b) decodes rows [start + a, start + b) of the chunk at `start`."""
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            results.append(fill(start, stop - start))
        return results

    if basis.name == "wavelet":
        lo, hi = _filters(basis.wavelet)
        is_haar = basis.wavelet in ("haar", "db1")  # its one-pass butterfly (`_kernels.haar`)
        h, w = rows // 2, cols // 2
        buffers = {}  # per thread: the (2, h, n) scratch, one spectrum, the parities' outputs (flat)

        def wavelet_chunk(start, size):
            dst = torch.empty(size, m, n)
            target = dst.view(size, m * n).numpy()

            def part(a, b):
                bufs = buffers.get(a)
                if bufs is None:
                    bufs = buffers[a] = (np.empty(2 * h * n, np.float32), np.empty(rows * cols, np.float32),
                                         np.empty(2 * ((n + 1) // 2), np.float32))
                if is_haar:
                    haar_kernel(vals, scl, bits, group_size, k, positions, m, n, h, w, start + a, start + b,
                                target[a:b], bufs[1])
                else:
                    wavelet_kernel(vals, scl, bits, group_size, k, positions, lo, hi, m, n, h, w, start + a,
                                   start + b, target[a:b], *bufs)

            _split(part, 0, size)
            return dst

        return chunks(wavelet_chunk)
    decoder = _decoder(layout, "cpu")
    scratch = decoder.scratch(chunk, "cpu")
    if basis.name == "fourier":  # the Hartley decoder's input is the spectrum itself
        spectra = np.empty((chunk, rows * cols), np.float32)

        def fourier_chunk(start, size):
            target = spectra[:size]
            _split(lambda a, b: spread_kernel(vals, scl, bits, group_size, k, positions, start + a, start + b,
                                              target[a:b]), 0, size)
            return decoder.finish(torch.from_numpy(target), scratch, None, torch.float32)

        return chunks(fourier_chunk)
    index = _decoder_index32(layout)  # fourier-real: a coefficient may feed two input slots
    gathered = np.empty((chunk, index.shape[0]), np.float32)
    factor = np.float32(decoder.coef_scale)

    def gather_chunk(start, size):
        target = gathered[:size]
        _split(lambda a, b: gather_kernel(vals, scl, bits, group_size, k, index, factor, start + a, start + b,
                                          target[a:b], np.empty(k + 1, np.float32)), 0, size)
        return decoder.finish(torch.from_numpy(target), scratch, None, torch.float32)

    return chunks(gather_chunk)


def adjoint_stacked(grad: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    """(B, m, n) float32 matrix gradients of a wavelet layout -> (B, k) coefficient gradients: the
    transpose of `decode_stacked` on float rows (equal to `spectral.adjoint.adjoint`, tested), in
    one compiled pass per matrix, split over the threads like the decode."""
    if layout.basis.name != "wavelet":
        raise ValueError(f"adjoint_stacked: wavelet layouts only, got {layout.basis.label}")
    m, n = layout.shape
    if grad.dim() != 3 or tuple(grad.shape[1:]) != (m, n):
        raise ValueError(f"expected (B, {m}, {n}) gradients, got {tuple(grad.shape)}")
    count = grad.shape[0]
    out = torch.empty(count, layout.k)
    if count == 0:
        return out
    flat = grad.detach().to(torch.float32).contiguous().view(count, m * n).numpy()
    target = out.numpy()
    lo, hi = _filters(layout.basis.wavelet)
    rows, cols = layout.spectral_shape
    h, w = rows // 2, cols // 2
    positions = _positions32(layout)
    kernel = _adjoint_kernel()

    def part(a, b):
        kernel(flat, positions, lo, hi, m, n, h, w, a, b, target[a:b], np.empty(2 * h * n, np.float32),
               np.empty(rows * cols, np.float32), np.empty(2 * ((n + 1) // 2), np.float32))

    _split(part, 0, count)
    return out


@lru_cache(maxsize=None)
def _adjoint_kernel():
    from . import _kernels as kernels

    return kernels.wavelet_adjoint


def prepare(layouts) -> None:
    """Build the tables of `layouts` (Omega's positions, the Fourier decoders', the filters) now,
    so that the first decode of an adapter with one of them does not."""
    for layout in layouts:
        _positions32(layout)
        if layout.basis.name == "wavelet":
            _filters(layout.basis.wavelet)
        else:
            _decoder(layout, "cpu")


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for every stored form, so that the first
    real decode pays no compilation."""
    from .basis import Basis
    from .materialise import layout_for

    for basis in (Basis("wavelet", "haar"), Basis("fourier"), Basis("fourier-real")):
        layout = layout_for(basis, 0, 0.5, (4, 6))
        for bits, values in ((FLOAT_BITS, torch.zeros(1, layout.k)),
                             (8, torch.zeros(1, layout.k, dtype=torch.int8)),
                             (4, torch.zeros(1, (layout.k + 1) // 2, dtype=torch.uint8))):
            scales = None if bits == FLOAT_BITS else torch.ones(1, -(-layout.k // 2))
            decode_stacked(values, scales, bits, 2, layout)
