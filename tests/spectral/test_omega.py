import hashlib

import numpy as np
import pytest

from selora_serve.spectral.omega import (
    num_coefficients,
    omega,
    omega_checksum,
    splitmix64,
    splitmix64_int,
    stream_key,
)


def test_splitmix64_matches_published_reference_values():
    # Vigna's splitmix64.c seeded with x = 0 outputs these three values first; its next() adds
    # the gamma and mixes, so output i is splitmix64_int(i * gamma).
    assert splitmix64_int(0) == 0xE220A8397B1DCDAF
    assert splitmix64_int(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    assert splitmix64_int((2 * 0x9E3779B97F4A7C15) % 2**64) == 0x06C45D188009454F


def test_vectorised_splitmix_equals_integer_reference():
    xs = [0, 1, 2, 2**63, 2**64 - 1, 123456789, 0xDEADBEEF]
    got = splitmix64(np.array(xs, dtype=np.uint64))
    assert [int(v) for v in got] == [splitmix64_int(x) for x in xs]


def _omega_by_definition(seed: int, shape: tuple[int, int], k: int) -> list[int]:
    """The spec's definition, in plain Python ints: the k smallest keys, sorted by position."""
    key = stream_key(seed, shape)
    keys = [(splitmix64_int(key ^ p), p) for p in range(shape[0] * shape[1])]
    return sorted(p for _, p in sorted(keys)[:k])


@pytest.mark.parametrize("seed,shape,k", [(0, (8, 16), 51), (7, (5, 33), 66), (2**40 + 3, (14, 70), 205)])
def test_omega_equals_definition(seed, shape, k):
    assert omega(seed, shape, k).tolist() == _omega_by_definition(seed, shape, k)


def test_omega_golden_vectors():
    # Pinned: a change here breaks every checkpoint ever written (docs/FORMAT.md, Omega).
    assert omega(0, (8, 64), 12).tolist() == GOLDEN_SMALL
    big = omega(0, (32, 4096), num_coefficients(0.6, (32, 4096)))
    assert len(big) == 52429
    assert omega_checksum(big) == GOLDEN_BIG_SHA


GOLDEN_SMALL = [35, 60, 77, 94, 100, 139, 154, 224, 425, 433, 488, 505]
GOLDEN_BIG_SHA = "80ac9d17f9c5bb4c1b123af7a7aa0a1fe7cd4bcb674e81a0df7e5cd31415c533"


def test_omega_properties():
    pos = omega(3, (32, 96), 1229)
    assert pos.dtype == np.int64 and len(pos) == 1229
    assert np.all(np.diff(pos) > 0) and pos.min() >= 0 and pos.max() < 32 * 96
    # nested: a smaller k is a subset of a larger one
    assert set(omega(3, (32, 96), 100).tolist()) <= set(pos.tolist())
    # depends on seed and on shape
    assert omega(4, (32, 96), 1229).tolist() != pos.tolist()
    assert omega(3, (96, 32), 1229).tolist() != pos.tolist()
    assert not pos.flags.writeable


def test_omega_rejects_bad_k_and_seed():
    with pytest.raises(ValueError, match="k must be"):
        omega(0, (4, 4), 17)
    with pytest.raises(ValueError, match="seed"):
        stream_key(-1, (4, 4))


def test_num_coefficients_rounds_like_the_paper():
    assert num_coefficients(0.6, (32, 4096)) == round(0.4 * 32 * 4096)
    assert num_coefficients(0.0, (3, 5)) == 15
    assert num_coefficients(0.99, (2, 2)) == 1  # never zero


def test_checksum_is_sha256_of_little_endian_int64():
    pos = np.array([1, 2, 300], dtype=np.int64)
    assert omega_checksum(pos) == hashlib.sha256(pos.astype("<i8").tobytes()).hexdigest()
