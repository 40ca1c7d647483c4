"""Quantised coefficients (format version 3, docs/FORMAT.md section 10): pure functions on tensors.

    spec = QuantSpec(bits=4, group_size=128)
    q, scale = quantize(coef, spec)          # int8 (k,) or packed uint8 (ceil(k/2),); float16 (ceil(k/G),)
    coef_hat = dequantize(q, scale, k, spec)  # float32 (k,); |coef_hat - coef| <= scale/2 per group

Symmetric absmax per group of `group_size` consecutive coefficients: scale = max|x| / qmax rounded
to float16 (qmax = 127 for 8 bits, 7 for 4 bits), q = clamp(round(x / scale), -qmax, qmax) against
that rounded scale, so the error bound holds for the stored scale. 4-bit values are packed two per
byte, element 2j in the low nibble and 2j + 1 in the high nibble, as two's complement (an odd k
leaves the last high nibble 0). `dequantize_reference` is the plain, loop-based definition that
the vectorised `dequantize` is tested against. No files, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (8, 4)
SCALE_DTYPE = torch.float16
SCALE_DTYPE_NAME = "float16"
MAX_GROUP = 1 << 16


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int = 128  # measured: the real model's r = 32 adapter, see docs/FORMAT.md section 10

    def __post_init__(self):
        if self.bits not in BITS or isinstance(self.bits, bool):
            raise ValueError(f"bits={self.bits!r}: expected 8 or 4")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) \
                or not 1 <= self.group_size <= MAX_GROUP:
            raise ValueError(f"group_size={self.group_size!r}: expected an integer in [1, {MAX_GROUP}]")

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def stored_len(self, k: int) -> int:
        """Length of the stored value tensor for k coefficients."""
        return k if self.bits == 8 else (k + 1) // 2

    def groups(self, k: int) -> int:
        return (k + self.group_size - 1) // self.group_size

    def stored_dtype(self) -> torch.dtype:
        return torch.int8 if self.bits == 8 else torch.uint8

    def to_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "scale_dtype": SCALE_DTYPE_NAME}


def _grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    pad = (-x.numel()) % group
    return torch.nn.functional.pad(x, (0, pad)).view(-1, group)


def quantize(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored values, float16 scales) of the 1-D coefficients `x` (ValueError if not finite or a
    group's scale is beyond float16)."""
    x = x.detach().to("cpu", torch.float32).reshape(-1)
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantise NaN/Inf coefficients")
    groups = _grouped(x, spec.group_size)
    scale32 = groups.abs().amax(dim=1) / spec.qmax
    if bool((scale32 > torch.finfo(SCALE_DTYPE).max).any()):
        raise ValueError(f"a coefficient group's scale exceeds float16's range ({float(scale32.max()):.3g})")
    scale = scale32.to(SCALE_DTYPE)
    stored = scale.to(torch.float32)
    safe = torch.where(stored > 0, stored, torch.ones_like(stored))
    q = torch.round(groups / safe[:, None]).clamp_(-spec.qmax, spec.qmax)
    q = torch.where(stored[:, None] > 0, q, torch.zeros_like(q)).reshape(-1)[: x.numel()].to(torch.int8)
    return (q if spec.bits == 8 else pack4(q)), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, k: int, spec: QuantSpec) -> torch.Tensor:
    """float32 (k,) coefficients from stored values and scales (vectorised)."""
    values = (q if spec.bits == 8 else unpack4(q, k)).to(torch.float32)
    return (_grouped(values, spec.group_size) * scale.to(torch.float32)[:, None]).reshape(-1)[:k]


def pack4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] -> uint8, two per byte (low nibble first)."""
    nibbles = (q.to(torch.int16) & 0xF).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    pairs = nibbles.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 packed nibbles -> int8 (k,) values (two's complement)."""
    low = (packed & 0xF).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    values = torch.stack([low, high], dim=1).reshape(-1)[:k]
    return torch.where(values > 7, values - 16, values).to(torch.int8)


def dequantize_reference(q: torch.Tensor, scale: torch.Tensor, k: int, spec: QuantSpec) -> torch.Tensor:
    """The definition, one coefficient at a time (the oracle `dequantize` is tested against)."""
    out = torch.empty(k, dtype=torch.float32)
    raw = q.tolist()
    for i in range(k):
        if spec.bits == 8:
            value = raw[i]
        else:
            byte = raw[i // 2]
            nibble = byte & 0xF if i % 2 == 0 else byte >> 4
            value = nibble - 16 if nibble > 7 else nibble
        out[i] = value * float(scale[i // spec.group_size])
    return out
