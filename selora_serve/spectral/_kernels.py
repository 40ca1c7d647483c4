"""The compiled kernels of `fused` (numba; imported on first decode, cached on disk by numba).

Module-level functions so that numba's on-disk cache applies (it does not to closures): a
process pays the compilation once per machine, and about 0.1 s to load them after that. The cache
lives beside this file (numba's default) when that is writable, else (a read-only install, as in
a container) under ~/.cache/selora-serve/numba or the temporary directory, unless
NUMBA_CACHE_DIR says where: numba refuses to compile a cached function it has nowhere to cache.
"""

import os
import tempfile
from pathlib import Path

import numba
import numpy as np


def _cache_dir() -> str | None:
    """Where numba should cache these kernels, or None for its default (beside this file)."""
    if os.environ.get("NUMBA_CACHE_DIR") or os.access(Path(__file__).parent, os.W_OK):
        return None
    for candidate in (Path.home() / ".cache" / "selora-serve" / "numba", Path(tempfile.gettempdir()) / "selora-numba"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return str(candidate)
    return None


if (_where := _cache_dir()) is not None:
    numba.config.CACHE_DIR = _where

jit = numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
U = np.uint64


@numba.njit(inline="always", cache=True)
def scatter(values, scales, b, bits, group, k, positions, spectrum):
    """spectrum[positions[i]] = coefficient i of stored row b (dequantised), the rest 0.
    `positions` unsigned, indices unsigned (see `wavelet`)."""
    spectrum[:] = 0.0
    b, k, group = U(b), U(k), U(group)
    if bits == 0:
        for i in range(k):
            spectrum[positions[i]] = values[b, i]
        return
    one, two, four = U(1), U(2), U(4)
    for g in range(U(scales.shape[1])):
        s = scales[b, g]
        stop = min(k, (g + one) * group)
        if bits == 8:
            for i in range(g * group, stop):
                spectrum[positions[i]] = np.float32(values[b, i]) * s
        elif (group & one) == U(0):  # whole bytes per group: both nibbles of a byte at once
            for j in range((g * group) >> one, stop >> one):
                byte = np.int32(values[b, j])
                low, high = byte & 15, byte >> 4
                spectrum[positions[two * j]] = np.float32(low - ((low & 8) << 1)) * s
                spectrum[positions[two * j + one]] = np.float32(high - ((high & 8) << 1)) * s
            if stop & one:  # an odd k: the last byte's low nibble
                low = np.int32(values[b, stop >> one]) & 15
                spectrum[positions[stop - one]] = np.float32(low - ((low & 8) << 1)) * s
        else:
            for i in range(g * group, stop):
                nib = (np.int32(values[b, i >> one]) >> np.int32((i & one) * four)) & 15
                spectrum[positions[i]] = np.float32(nib - ((nib & 8) << 1)) * s


@jit
def wavelet(values, scales, bits, group, k, positions, lo, hi, m, n, h, w, rows_from, rows_to, out, scratch,
            spectrum, parts):
    """out[b - rows_from] for b in [rows_from, rows_to): see `fused`'s docstring. lo/hi: (2, L/2)
    filters by output parity; out (rows, m n) and flat buffers: scratch (2 h n,), spectrum (2h 2w,),
    parts (2 ceil(n/2),). Every index is unsigned: numba then skips its negative-index wrap-around,
    which otherwise keeps LLVM from vectorising these loops (4-5x slower, measured)."""
    one, two = U(1), U(2)
    m, n, h, w = U(m), U(n), U(h), U(w)
    N = two * w
    taps = U(lo.shape[1])
    half = (n + one) // two
    for b in range(U(rows_from), U(rows_to)):
        o = b - U(rows_from)
        scatter(values, scales, b, bits, group, k, positions, spectrum)
        for a in range(two):  # the row axis' band: spectrum columns [w*a, w*a + w)
            for i in range(h):
                low = i * N + w * a  # the column axis' bands: spectrum rows i (low), i + h (high)
                high = low + h * N
                # even and odd outputs apart (contiguous, vectorised), then interleaved
                for par in range(two):
                    base, count = par * half, half - (par & n)
                    wl, wh = lo[par, 0], hi[par, 0]
                    for q in range(count):
                        parts[base + q] = wl * spectrum[low + q] + wh * spectrum[high + q]
                    for t in range(one, taps):
                        wl, wh = lo[par, t], hi[par, t]
                        for q in range(count):
                            parts[base + q] += wl * spectrum[low + q + t] + wh * spectrum[high + q + t]
                row = (a * h + i) * n
                for q in range(n >> one):
                    scratch[row + two * q] = parts[q]
                    scratch[row + two * q + one] = parts[half + q]
                if n & one:
                    scratch[row + n - one] = parts[half - one]
        for x in range(m):
            par, q = x & one, x >> one
            dst = x * n
            s0, s1 = q * n, (h + q) * n
            wl, wh = lo[par, 0], hi[par, 0]
            for y in range(n):
                out[o, dst + y] = wl * scratch[s0 + y] + wh * scratch[s1 + y]
            for t in range(one, taps):
                s0, s1 = (q + t) * n, (h + q + t) * n
                wl, wh = lo[par, t], hi[par, t]
                for y in range(n):
                    out[o, dst + y] += wl * scratch[s0 + y] + wh * scratch[s1 + y]


@jit
def spread(values, scales, bits, group, k, positions, rows_from, rows_to, out):
    """out[b - rows_from] = the spectrum of row b: its coefficients at `positions`, 0 elsewhere."""
    for b in range(rows_from, rows_to):
        scatter(values, scales, b, bits, group, k, positions, out[b - rows_from])


@jit
def gather(values, scales, bits, group, k, index, factor, rows_from, rows_to, out, row):
    """out[b - rows_from, s] = factor * coefficient index[s] of row b (0 where index[s] == k)."""
    identity = np.arange(k + 1).astype(np.uint32)
    for b in range(rows_from, rows_to):
        o = b - rows_from
        scatter(values, scales, b, bits, group, k, identity, row)
        dst = out[o]
        for s in range(index.shape[0]):
            dst[s] = factor * row[index[s]]


@jit
def haar(values, scales, bits, group, k, positions, m, n, h, w, rows_from, rows_to, out, spectrum):
    """The Haar special case of `wavelet` in one pass: each output 2x2 block is a butterfly of its
    four bands' entries, X[2i+a, 2j+c] = (LL + sa LH + sc HL + sa sc HH) / 2 with s = (-1)**,
    LL/LH in spectrum row i (columns j, w + j), HL/HH in row h + i (`wavelet.haar_idwt2`).
    Odd sides: the last block row or column is cropped. Unsigned indices as in `wavelet`."""
    zero, one, two = U(0), U(1), U(2)
    m, n, h, w = U(m), U(n), U(h), U(w)
    N = two * w
    pairs = n >> one
    half = np.float32(0.5)
    for b in range(U(rows_from), U(rows_to)):
        o = b - U(rows_from)
        scatter(values, scales, b, bits, group, k, positions, spectrum)
        for i in range(h):
            ll, hl = i * N, (h + i) * N
            for a in range(two):
                x = two * i + a
                if x >= m:
                    break
                dst = x * n
                if a == zero:
                    for j in range(pairs):
                        p = spectrum[ll + j] + spectrum[ll + w + j]
                        q = spectrum[hl + j] + spectrum[hl + w + j]
                        out[o, dst + two * j] = half * (p + q)
                        out[o, dst + two * j + one] = half * (p - q)
                    if n & one:
                        out[o, dst + n - one] = half * (spectrum[ll + pairs] + spectrum[ll + w + pairs]
                                                        + spectrum[hl + pairs] + spectrum[hl + w + pairs])
                else:
                    for j in range(pairs):
                        p = spectrum[ll + j] - spectrum[ll + w + j]
                        q = spectrum[hl + j] - spectrum[hl + w + j]
                        out[o, dst + two * j] = half * (p + q)
                        out[o, dst + two * j + one] = half * (p - q)
                    if n & one:
                        out[o, dst + n - one] = half * (spectrum[ll + pairs] - spectrum[ll + w + pairs]
                                                        + spectrum[hl + pairs] - spectrum[hl + w + pairs])


@jit
def wavelet_adjoint(grad, positions, lo, hi, m, n, h, w, rows_from, rows_to, out, scratch, spectrum, parts):
    """The transpose of `wavelet` (float rows): out[b - rows_from] = the gradient of row b's k
    coefficients for the matrix gradient grad[b] (m n,). Pass 2 transposed (every output row's
    gradient spread back onto the scratch rows it read), pass 1 transposed (each scratch row
    de-interleaved by parity, then spread onto the spectrum entries it read), then the entries
    on Omega. Buffers as in `wavelet`. Unsigned indices, for the same reason."""
    one, two = U(1), U(2)
    m, n, h, w = U(m), U(n), U(h), U(w)
    N = two * w
    taps = U(lo.shape[1])
    half = (n + one) // two
    k = U(out.shape[1])
    for b in range(U(rows_from), U(rows_to)):
        o = b - U(rows_from)
        scratch[:] = 0.0
        for x in range(m):
            par, q = x & one, x >> one
            src = x * n
            for t in range(taps):
                s0, s1 = (q + t) * n, (h + q + t) * n
                wl, wh = lo[par, t], hi[par, t]
                for y in range(n):
                    g = grad[b, src + y]
                    scratch[s0 + y] += wl * g
                    scratch[s1 + y] += wh * g
        spectrum[:] = 0.0
        for a in range(two):
            for i in range(h):
                row = (a * h + i) * n
                for q in range(n >> one):
                    parts[q] = scratch[row + two * q]
                    parts[half + q] = scratch[row + two * q + one]
                if n & one:
                    parts[half - one] = scratch[row + n - one]
                low = i * N + w * a
                high = low + h * N
                for par in range(two):
                    base, count = par * half, half - (par & n)
                    for t in range(taps):
                        wl, wh = lo[par, t], hi[par, t]
                        for q in range(count):
                            v = parts[base + q]
                            spectrum[low + q + t] += wl * v
                            spectrum[high + q + t] += wh * v
        for j in range(k):
            out[o, j] = spectrum[positions[j]]
