"""The compiled kernels of `fused` (numba; imported on first decode, cached on disk by numba).

Module-level functions so that numba's on-disk cache applies (it does not to closures): a
process pays the compilation once per machine, and about 0.1 s to load them after that.
"""

import numba
import numpy as np

jit = numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")


@numba.njit(inline="always", cache=True)
def scatter(values, scales, b, bits, group, k, positions, spectrum):
    """spectrum[positions[i]] = coefficient i of stored row b (dequantised), the rest 0."""
    spectrum[:] = 0.0
    if bits == 0:
        for i in range(k):
            spectrum[positions[i]] = values[b, i]
        return
    for g in range(scales.shape[1]):
        s = scales[b, g]
        stop = min(k, (g + 1) * group)
        if bits == 8:
            for i in range(g * group, stop):
                spectrum[positions[i]] = np.float32(values[b, i]) * s
        else:
            for i in range(g * group, stop):
                nib = (np.int32(values[b, i >> 1]) >> ((i & 1) << 2)) & 15
                spectrum[positions[i]] = np.float32(nib - ((nib & 8) << 1)) * s


@jit
def wavelet(values, scales, bits, group, k, positions, lo, hi, h, w, rows_from, rows_to, out, scratch, spectrum, parts):
    """out[b - rows_from] for b in [rows_from, rows_to): see `fused`'s docstring. lo/hi: (2, L/2)
    filters by output parity; scratch (2, h, n); spectrum (2h * 2w,); parts (2, ceil(n/2))."""
    m, n = out.shape[1], out.shape[2]
    N = 2 * w
    taps = lo.shape[1]
    half = (n + 1) // 2
    for b in range(rows_from, rows_to):
        o = b - rows_from
        scatter(values, scales, b, bits, group, k, positions, spectrum)
        for a in range(2):  # the row axis' band: spectrum columns [w*a, w*a + w)
            for i in range(h):
                # the column axis' bands: spectrum rows i (low) and i + h (high)
                low = spectrum[i * N + w * a: i * N + w * a + w]
                high = spectrum[(i + h) * N + w * a: (i + h) * N + w * a + w]
                # even and odd outputs apart (contiguous, vectorised), then interleaved
                for par in range(2):
                    part, count = parts[par], half - (par & n)
                    wl, wh = lo[par, 0], hi[par, 0]
                    for q in range(count):
                        part[q] = wl * low[q] + wh * high[q]
                    for t in range(1, taps):
                        wl, wh = lo[par, t], hi[par, t]
                        for q in range(count):
                            part[q] += wl * low[q + t] + wh * high[q + t]
                dst, even, odd = scratch[a, i], parts[0], parts[1]
                for q in range(n >> 1):
                    dst[2 * q] = even[q]
                    dst[2 * q + 1] = odd[q]
                if n & 1:
                    dst[n - 1] = even[half - 1]
        for x in range(m):
            par, q = x & 1, x >> 1
            dst = out[o, x]
            s0, s1 = scratch[0, q], scratch[1, q]
            wl, wh = lo[par, 0], hi[par, 0]
            for y in range(n):
                dst[y] = wl * s0[y] + wh * s1[y]
            for t in range(1, taps):
                s0, s1 = scratch[0, q + t], scratch[1, q + t]
                wl, wh = lo[par, t], hi[par, t]
                for y in range(n):
                    dst[y] += wl * s0[y] + wh * s1[y]


@jit
def spread(values, scales, bits, group, k, positions, rows_from, rows_to, out):
    """out[b - rows_from] = the spectrum of row b: its coefficients at `positions`, 0 elsewhere."""
    for b in range(rows_from, rows_to):
        scatter(values, scales, b, bits, group, k, positions, out[b - rows_from])


@jit
def gather(values, scales, bits, group, k, index, factor, rows_from, rows_to, out, row):
    """out[b - rows_from, s] = factor * coefficient index[s] of row b (0 where index[s] == k)."""
    identity = np.arange(k + 1).astype(np.int32)
    for b in range(rows_from, rows_to):
        o = b - rows_from
        scatter(values, scales, b, bits, group, k, identity, row)
        dst = out[o]
        for s in range(index.shape[0]):
            dst[s] = factor * row[index[s]]
