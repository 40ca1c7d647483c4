"""One-level 2D discrete wavelet transform in SeLoRA's spectral layout (pure tensor math).

Layout (normative text: docs/FORMAT.md, "Wavelet layout"). A spatial (m, n) matrix with a
wavelet of decomposition filter length L has sub-bands of shape

    (h, w) = ((m + L - 1) // 2, (n + L - 1) // 2)

(pywt's `dwt_coeff_len` for its non-periodising modes; for Haar and even sizes, (m/2, n/2)).
The spectral matrix is (2h, 2w), tiled [[LL, LH], [HL, HH]] where, in pywt's names,
LL = cA ('aa'), LH = cH ('da'), HL = cV ('ad'), HH = cD ('dd'). The inverse is pywt's / ptwt's
`idwt2` of those bands, whose output (2h - L + 2 rows, likewise columns) is cropped to its
top-left (m, n). ptwt computes in float32/float64 only; callers cast afterwards.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

# The wavelets tested against pywt/ptwt in this project; any other pywt discrete wavelet is
# accepted by `validate_wavelet` but only these are promised in the format spec.
TESTED_WAVELETS = ("haar", "db4", "bior2.2", "coif1")


@lru_cache(maxsize=None)
def _discrete_wavelets() -> frozenset[str]:
    import pywt

    return frozenset(pywt.wavelist(kind="discrete"))


def validate_wavelet(name: str) -> str:
    """Return `name` if pywt knows it as a discrete wavelet, else raise ValueError."""
    if name not in _discrete_wavelets():
        raise ValueError(
            f"unknown wavelet {name!r}: expected a pywt discrete wavelet such as "
            f"{', '.join(TESTED_WAVELETS)}"
        )
    return name


@lru_cache(maxsize=None)
def filter_length(wavelet: str) -> int:
    import pywt

    return pywt.Wavelet(validate_wavelet(wavelet)).dec_len


def subband_shape(shape: tuple[int, int], wavelet: str) -> tuple[int, int]:
    length = filter_length(wavelet)
    m, n = shape
    return ((m + length - 1) // 2, (n + length - 1) // 2)


def spectral_shape(shape: tuple[int, int], wavelet: str) -> tuple[int, int]:
    h, w = subband_shape(shape, wavelet)
    return (2 * h, 2 * w)


def split_bands(spectrum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 2h, 2w) -> (LL, LH, HL, HH), each (..., h, w), as views."""
    h, w = spectrum.shape[-2] // 2, spectrum.shape[-1] // 2
    return (
        spectrum[..., :h, :w],
        spectrum[..., :h, w:],
        spectrum[..., h:, :w],
        spectrum[..., h:, w:],
    )


def tile_bands(ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor, hh: torch.Tensor) -> torch.Tensor:
    """Inverse of `split_bands`."""
    return torch.cat([torch.cat([ll, lh], dim=-1), torch.cat([hl, hh], dim=-1)], dim=-2)


def _as_ptwt_dtype(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def idwt2(spectrum: torch.Tensor, wavelet: str, shape: tuple[int, int]) -> torch.Tensor:
    """Reference inverse through ptwt: (..., 2h, 2w) spectrum -> (..., m, n) matrix."""
    import ptwt

    spectrum = _as_ptwt_dtype(spectrum)
    ll, lh, hl, hh = split_bands(spectrum)
    lead = spectrum.shape[:-2]
    flat = [b.reshape(-1, *b.shape[-2:]) for b in (ll, lh, hl, hh)]
    out = ptwt.waverec2([flat[0], (flat[1], flat[2], flat[3])], validate_wavelet(wavelet))
    m, n = shape
    return out[..., :m, :n].reshape(*lead, m, n)


@lru_cache(maxsize=None)
def _synthesis_filters(wavelet: str) -> torch.Tensor:
    """(2, 1, L) float64: pywt's reconstruction filters (low, high) as conv_transpose1d weights."""
    import pywt

    w = pywt.Wavelet(validate_wavelet(wavelet))
    return torch.tensor([w.rec_lo, w.rec_hi], dtype=torch.float64).unsqueeze(1)


def _transposed_conv(approx: torch.Tensor, detail: torch.Tensor, wavelet: str) -> torch.Tensor:
    """(..., h) bands -> (..., 2h + L - 2): the full synthesis, before pywt's crop.

    pywt's idwt (any non-periodising mode) is the full convolution of the upsampled bands with
    the reconstruction filters, from index L - 2 on: a stride-2 conv_transpose1d of the two
    bands as two input channels. The plain form; `_synthesise_last` is the fast one.
    """
    filters = _synthesis_filters(wavelet).to(approx.device, approx.dtype)
    lead, h = approx.shape[:-1], approx.shape[-1]
    x = torch.stack([approx, detail], dim=-2).reshape(-1, 2, h)
    full = torch.nn.functional.conv_transpose1d(x, filters, stride=2)
    return full.reshape(*lead, full.shape[-1])


def _unit_responses(wavelet: str, inputs: int, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), each (inputs, length) float64: row i is the full synthesis of a unit
    approximation (low) or detail (high) coefficient at input i, outputs start .. start + length."""
    eye = torch.eye(inputs, dtype=torch.float64)
    zero = torch.zeros_like(eye)
    window = slice(start, start + length)
    return _transposed_conv(eye, zero, wavelet)[:, window], _transposed_conv(zero, eye, wavelet)[:, window]


_BLOCK = 16  # input positions per block of `_synthesise_last` (16-64 measure alike on CPU)


@lru_cache(maxsize=64)
def _block_synthesis(wavelet: str, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(2 (B + L/2 - 1), 2 B): the 2B outputs of one block from its two bands' B + L/2 - 1 inputs."""
    half = filter_length(wavelet) // 2
    first = 2 * (half - 1)  # the first output a block's inputs determine completely
    low, high = _unit_responses(wavelet, _BLOCK + half - 1, first, 2 * _BLOCK)
    return torch.cat([low, high]).to(device, dtype)


def _synthesise_last(pairs: torch.Tensor, wavelet: str, length: int) -> torch.Tensor:
    """(..., 2, h) (approximation, detail) -> (..., length): the one-level 1D inverse DWT along
    the last dim, `_transposed_conv(...)[..., L - 2 : L - 2 + length]`, as one matrix product.

    The synthesis is a banded Toeplitz operator: cut the output into blocks of 2B, each is a
    fixed (2B x 2(B + L/2 - 1)) matrix times its overlapping window of inputs, so every block of
    every row of every matrix is one row of a single GEMM (about 3x faster than CPU
    conv_transpose1d with two channels, which is poorly vectorised).
    """
    half = filter_length(wavelet) // 2
    lead, h = pairs.shape[:-2], pairs.shape[-1]
    blocks = -(-length // (2 * _BLOCK))
    need = blocks * _BLOCK + half - 1  # inputs beyond these only reach outputs past `length`
    x = pairs.reshape(-1, 2, h)
    x = torch.nn.functional.pad(x, (0, max(0, need - h)))[..., :need]
    windows = x.unfold(-1, _BLOCK + half - 1, _BLOCK).transpose(1, 2).reshape(-1, 2 * (_BLOCK + half - 1))
    out = windows @ _block_synthesis(wavelet, str(x.device), x.dtype)
    return out.reshape(x.shape[0], blocks * 2 * _BLOCK)[:, :length].reshape(*lead, length)


@lru_cache(maxsize=256)
def _short_synthesis(wavelet: str, bands: int, length: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(length, 2 bands) = [G_low | G_high]: the 1D inverse DWT of a short axis as a matrix."""
    low, high = _unit_responses(wavelet, bands, filter_length(wavelet) - 2, length)
    return torch.cat([low.T, high.T], dim=1).to(device, dtype).contiguous()


def oriented_layout(spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The tile rearranged for `synthesise_oriented`: transposed if the matrix is taller than
    wide (the transform commutes with transposition: the tile of X^T is the tile of X,
    transposed), then [[LL, HL], [LH, HH]]: rows by the short axis' band (pywt's LH = cH is
    detail along the rows), columns by the long axis' band. A copy; decoders gather into it."""
    m, n = shape
    if m > n:
        spectrum = spectrum.mT
    ll, lh, hl, hh = split_bands(spectrum)
    return tile_bands(ll, hl, lh, hh)


def synthesise_oriented(oriented: torch.Tensor, wavelet: str, shape: tuple[int, int]) -> torch.Tensor:
    """(..., 2h, 2w) `oriented_layout` -> (..., short, long) spatial matrix (transposed back by
    the caller when the matrix is taller than wide). Differentiable.

    One small GEMM synthesises the short side (the rank, for a LoRA factor) and leaves the two
    column bands side by side, which is exactly the (approximation, detail) pairs the long side's
    block-Toeplitz GEMM reads.
    """
    short, long = sorted(shape)
    rows = oriented.shape[-2] // 2
    synthesis = _short_synthesis(wavelet, rows, short, str(oriented.device), oriented.dtype)
    columns = synthesis @ oriented  # (..., short, 2w): [column band low | column band high]
    pairs = columns.view(*columns.shape[:-1], 2, columns.shape[-1] // 2)
    return _synthesise_last(pairs, wavelet, long)


def separable_idwt2(spectrum: torch.Tensor, wavelet: str, shape: tuple[int, int]) -> torch.Tensor:
    """Any pywt discrete wavelet's inverse as two batched GEMMs: equal to `idwt2` (ptwt's), and
    differentiable, batched over every leading dimension where ptwt pads and convolves matrix
    by matrix."""
    spatial = synthesise_oriented(oriented_layout(_as_ptwt_dtype(spectrum), shape), wavelet, shape)
    return spatial.mT if shape[0] > shape[1] else spatial


def haar_block_positions(spectral_shape: tuple[int, int]) -> np.ndarray:
    """Flat positions in a (2h, 2w) Haar spectrum, listed in "block order" (h, 2, w, 2).

    Entry (i, a, j, s) is band (a, b) at (i, j) with b = 1 - s, where (a, b) = (0, 0) is LL,
    (1, 0) LH, (0, 1) HL and (1, 1) HH: spectrum[i + h*b, j + w*a]. Gathered in this order, each
    output 2x2 block's four inputs sit where its four outputs go, so the inverse is a separable
    butterfly over the two size-2 axes (`haar_butterfly`) with no reshuffling. The last axis is
    stored reversed (b = 1 first) so that its butterfly is one complex multiplication.
    """
    rows, cols = spectral_shape
    if rows % 2 or cols % 2:
        raise ValueError(f"a Haar spectrum has even sides, got {spectral_shape}")
    h, w = rows // 2, cols // 2
    i = np.arange(h).reshape(h, 1, 1, 1)
    a = np.arange(2).reshape(1, 2, 1, 1)
    j = np.arange(w).reshape(1, 1, w, 1)
    b = 1 - np.arange(2).reshape(1, 1, 1, 2)
    return ((i + h * b) * cols + (j + w * a)).reshape(-1)


def haar_butterfly(
    blocks: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Unnormalised Haar synthesis of block-ordered bands: (..., h, 2, w, 2) -> `out`, same shape.

    With x[i, a, j, b] = blocks[i, a, j, 1 - b] (see `haar_block_positions`),
    out[i, a, j, b] = sum over (a', b') of (-1)**(a*a' + b*b') * x[i, a', j, b'], i.e. twice
    pywt's Haar inverse (callers fold the 1/2 into their inputs). Viewed as (..., 2h, 2w), `out`
    is the spatial matrix; it may have any float dtype. `scratch` (like `blocks`) avoids a
    full-size temporary. Columns first: a pair (x1, x0) read as the complex x1 + i*x0, times
    1 - i, is (x0 + x1) + i*(x0 - x1), one contiguous complex multiply where an add and a sub
    over stride-2 views cost 3x as much. Then rows: contiguous adds and subs into `out`.
    """
    if scratch is None:
        scratch = torch.empty_like(blocks)
    if blocks.dtype in (torch.float32, torch.float64):
        torch.mul(torch.view_as_complex(blocks), 1 - 1j, out=torch.view_as_complex(scratch))
    else:  # no complex type for bfloat16: the same butterfly, elementwise
        x0, x1 = blocks.select(-1, 1), blocks.select(-1, 0)
        torch.add(x0, x1, out=scratch.select(-1, 0))
        torch.sub(x0, x1, out=scratch.select(-1, 1))
    top, bottom = scratch.select(-3, 0), scratch.select(-3, 1)
    torch.add(top, bottom, out=out.select(-3, 0))
    torch.sub(top, bottom, out=out.select(-3, 1))
    return out


@lru_cache(maxsize=64)
def _haar_block_index(spectral_shape: tuple[int, int], device: str) -> torch.Tensor:
    return torch.from_numpy(haar_block_positions(spectral_shape)).to(device)


def haar_idwt2(spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Closed-form Haar inverse, equal to `idwt2(spectrum, "haar", shape)`.

    With pywt's Haar filters, each output 2x2 block is a butterfly of the four bands' entries:
    X[2i+a, 2j+b] = (LL + sa*LH + sb*HL + sa*sb*HH) / 2 with sa = (-1)**a, sb = (-1)**b.
    """
    rows, cols = spectrum.shape[-2:]
    lead = spectrum.shape[:-2]
    index = _haar_block_index((rows, cols), str(spectrum.device))
    blocks = spectrum.reshape(*lead, rows * cols).index_select(-1, index).mul_(0.5)
    blocks = blocks.view(*lead, rows // 2, 2, cols // 2, 2)
    out = haar_butterfly(blocks, torch.empty_like(blocks)).view(*lead, rows, cols)
    m, n = shape
    return out if (m, n) == (rows, cols) else out[..., :m, :n]


def dwt2(matrix: torch.Tensor, wavelet: str, mode: str = "symmetric") -> torch.Tensor:
    """Forward transform through ptwt: (..., m, n) -> (..., 2h, 2w) spectrum in SeLoRA's layout."""
    import ptwt

    matrix = _as_ptwt_dtype(matrix)
    lead = matrix.shape[:-2]
    flat = matrix.reshape(-1, *matrix.shape[-2:])
    ll, (lh, hl, hh) = ptwt.wavedec2(flat, validate_wavelet(wavelet), mode=mode, level=1)
    spectrum = tile_bands(ll, lh, hl, hh)
    return spectrum.reshape(*lead, *spectrum.shape[-2:])
