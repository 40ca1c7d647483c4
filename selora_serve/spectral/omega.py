"""Omega: the seeded positions of the learnable spectral coefficients.

Contract (the normative text is docs/FORMAT.md, section "Omega"):

    omega(seed, (M, N), k) -> sorted int64 array of k distinct flat positions in [0, M*N)

Every position p gets a 64-bit key from the SplitMix64 finaliser, keyed by the seed and the
spectral shape; Omega is the set of the k smallest keys, sorted by position. SplitMix64 is a
bijection of uint64, so keys never tie and the set is unique: no library RNG, no dependence on
numpy, torch, the device or their versions. Only plain uint64 arithmetic modulo 2**64 is used,
which numpy implements exactly for arrays. Omega for k1 < k2 is a subset of Omega for k2.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def splitmix64_int(x: int) -> int:
    """SplitMix64 of one Python int (reference for the vectorised version)."""
    z = (x + GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 applied elementwise to a uint64 array (wraps modulo 2**64)."""
    z = x.astype(np.uint64, copy=True)
    z += np.uint64(GAMMA)
    z ^= z >> np.uint64(30)
    z *= np.uint64(MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(MIX2)
    z ^= z >> np.uint64(31)
    return z


def stream_key(seed: int, shape: tuple[int, int]) -> int:
    """The per-(seed, spectral shape) key that every position key is derived from."""
    if not 0 <= seed <= MASK64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    m, n = shape
    return splitmix64_int(splitmix64_int(splitmix64_int(seed) ^ m) ^ n)


def num_coefficients(eta: float, shape: tuple[int, int]) -> int:
    """k = round((1 - eta) * m * n) for a spatial (m, n) matrix; at least 1."""
    m, n = shape
    return max(1, int(round((1.0 - eta) * m * n)))


@lru_cache(maxsize=256)
def _omega_cached(seed: int, shape: tuple[int, int], k: int) -> np.ndarray:
    m, n = shape
    size = m * n
    if not 0 < k <= size:
        raise ValueError(f"k must be in [1, {size}] for spectral shape {shape}, got {k}")
    positions = np.arange(size, dtype=np.uint64)
    keys = splitmix64(positions ^ np.uint64(stream_key(seed, shape)))
    if k == size:
        chosen = np.arange(size, dtype=np.int64)
    else:
        chosen = np.argpartition(keys, k - 1)[:k].astype(np.int64)
        chosen.sort()
    chosen.setflags(write=False)
    return chosen


def omega(seed: int, shape: tuple[int, int], k: int) -> np.ndarray:
    """Sorted flat positions (int64, read-only) of the k learnable entries of an (M, N) spectrum."""
    return _omega_cached(int(seed), (int(shape[0]), int(shape[1])), int(k))


def omega_checksum(positions: np.ndarray) -> str:
    """sha256 (hex) of the positions as little-endian int64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(positions, dtype="<i8").tobytes()).hexdigest()


@lru_cache(maxsize=256)
def omega_digest(seed: int, shape: tuple[int, int], k: int) -> str:
    """`omega_checksum(omega(seed, shape, k))`, cached: a server verifies the same few Omegas
    on every adapter load."""
    return omega_checksum(omega(seed, shape, k))
