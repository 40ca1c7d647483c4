"""The bytes of a safetensors file, read without safetensors: its header's layout, and a finiteness
test over its data region without building a tensor. What the API process uses to validate a
coefficient file in the same pass that copies it (`format.check_coefficients`).
"""

from __future__ import annotations

import json
import warnings

import torch

# safetensors dtype code -> (bytes per value, torch's name for it)
_SAFETENSORS = {"F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
                "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"), "U8": (1, "uint8"),
                "BOOL": (1, "bool"), "U64": (8, "uint64"), "U32": (4, "uint32"), "U16": (2, "uint16"),
                "C64": (8, "complex64"), "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2")}
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit


def safetensors_layout(data: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors of a safetensors file's bytes, {name: (dtype code, shape)}, from its header
    alone, with every check safetensors' own parser makes (header bounds and JSON, every tensor's
    byte count from its dtype and shape, offsets contiguous from 0 to the end of the file, no
    hole, no overlap) and some it does not (a tensor declared twice, unknown keys). ValueError naming the
    defect. Nothing is copied: a file this accepts, `safetensors.torch.load` loads."""
    if len(data) < 8:
        raise ValueError("shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_SAFETENSORS_HEADER or 8 + n > len(data):
        raise ValueError(f"header length {n} does not fit the file's {len(data)} bytes")
    raw = bytes(data[8:8 + n])
    if not raw.startswith(b"{"):
        raise ValueError("header does not start with '{'")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if raw.count(b'"data_offsets"') != len(header):  # a name given twice (JSON keeps the last)
        raise ValueError("a tensor is declared more than once")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ must map strings to strings")
    spans, out = [], {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{name}: expected dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _SAFETENSORS:
            raise ValueError(f"{name}: unknown dtype {dtype!r}")
        ints = lambda xs: isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                       for x in xs)
        if not ints(shape) or not ints(offsets) or len(offsets) != 2:
            raise ValueError(f"{name}: shape and data_offsets must be lists of non-negative integers")
        start, end = offsets
        count = 1
        for dim in shape:
            count *= dim
        if end < start or end - start != count * _SAFETENSORS[dtype][0]:
            raise ValueError(f"{name}: data_offsets {offsets} do not hold {dtype} {shape}")
        spans.append((start, end, name))
        out[name] = (dtype, tuple(shape))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise ValueError(f"{name}: data_offsets start at {start}, expected {position} (a hole or an overlap)")
        position = end
    if 8 + n + position != len(data):
        raise ValueError(f"the tensors cover {position} bytes of data, the file holds {len(data) - 8 - n}")
    return out


def all_finite_fast(data: bytes, dtype: torch.dtype) -> bool:
    """True if the float32 sum of every value in the safetensors file `data` is finite: always so
    when all values are finite, unless the sum overflows (then callers run the exact per-tensor
    test). Call only once every tensor is known to have `dtype`: the data region after the header
    is then exactly their values (the format allows no holes), summed in place without a copy."""
    start = 8 + int.from_bytes(data[:8], "little")
    size = torch.empty((), dtype=dtype).element_size()
    if (len(data) - start) % size:
        return False  # not the layout assumed above: let the exact test decide
    if len(data) == start:
        return True
    with warnings.catch_warnings():  # read-only bytes: the view is only summed, never written
        warnings.simplefilter("ignore", UserWarning)
        values = torch.frombuffer(data, dtype=dtype, offset=start)
    return bool(torch.isfinite(values.sum(dtype=torch.float32)))




def nonfinite_counts(data: bytes, names: dict[str, torch.dtype]) -> dict[str, int]:
    """NaN/Inf values of each float tensor in `names` ({name: its dtype}) of the safetensors bytes
    `data` (checked by `safetensors_layout` first), without building a tensor per name unless one
    holds any: for a quantised file, whose integer values cannot be non-finite, only its scales
    need looking at (one test over their bytes gathered per dtype, then per tensor if it fails)."""
    import numpy as np

    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8:8 + n]))
    raw = np.frombuffer(data, dtype=np.uint8, offset=8 + n)
    spans = {name: header[name]["data_offsets"] for name in names}
    out = dict.fromkeys(names, 0)
    for dtype in set(names.values()):
        mine = [name for name, d in names.items() if d == dtype]
        gathered = torch.from_numpy(np.concatenate([raw[a:b] for a, b in (spans[m] for m in mine)] or [raw[:0]]))
        if bool(torch.isfinite(gathered.view(dtype)).all()):
            continue
        for name in mine:
            start, end = spans[name]
            out[name] = int((~torch.isfinite(torch.from_numpy(raw[start:end].copy()).view(dtype))).sum())
    return out
