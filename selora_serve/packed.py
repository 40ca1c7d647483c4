"""An adapter's coefficients as stored, one stack per matrix layout: the form a server holds.

    packed = load_packed(path, base_config=..., verify=...)   (checkpoint.format)
    packed = pack(adapter)                                     (an in-memory SpectralAdapter)
    dense = materialise_packed(packed)   # {module: (A, B)}, equal to materialise_adapter's
    packed.nbytes                        # what holding it costs: values, scales, magnitudes

Every matrix of one layout is one row of that layout's stack, so an adapter is a handful of
allocations (not two per module: fewer, larger blocks are what keeps a long-lived host cache's
heap from fragmenting), and a decode is one compiled call per layout (`spectral.fused`).
Quantised checkpoints stay quantised here: int8 or packed int4 values with float32 scales per
group, dequantised only inside the decode. No files, no I/O.
"""

from __future__ import annotations

import json
import mmap
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import torch

from .adapter import BaseModelInfo, SpectralAdapter
from .config import SeLoRAConfig
from .spectral.fused import FLOAT_BITS, decode_stacked
from .spectral.materialise import MatrixLayout, layout_for, materialise_chunks


@dataclass
class LayoutStack:
    """The stored rows of every matrix of one layout: row i is `members[i]` = (module, 0 for A /
    1 for B); `values` (B, k) float, (B, k) int8 or (B, ceil(k/2)) uint8, `scales` (B, groups)."""

    layout: MatrixLayout
    members: tuple[tuple[str, int], ...]
    values: torch.Tensor
    scales: torch.Tensor | None = None


@dataclass
class PackedAdapter:
    config: SeLoRAConfig
    base: BaseModelInfo
    modules: Mapping[str, tuple[int, int]]  # name -> (in_features, out_features); shared, read-only
    stacks: list[LayoutStack]
    bits: int = FLOAT_BITS  # 8 or 4 when quantised
    group_size: int = 1
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)  # SeDoRA

    @property
    def nbytes(self) -> int:
        """Bytes held: stored values, scales (float32 in memory) and magnitudes."""
        total = sum(s.values.nbytes + (0 if s.scales is None else s.scales.nbytes) for s in self.stacks)
        return total + sum(m.nbytes for m in self.magnitudes.values())


def layout_members(config: SeLoRAConfig, modules: dict[str, tuple[int, int]]) -> dict[MatrixLayout, list[tuple[str, int]]]:
    """The (module, A=0 / B=1) matrices of each layout, in module order."""
    groups: dict[MatrixLayout, list[tuple[str, int]]] = defaultdict(list)
    basis = config.spectral_basis
    for name, (d_in, d_out) in modules.items():
        groups[layout_for(basis, config.seed, config.eta, (config.r, d_in))].append((name, 0))
        groups[layout_for(basis, config.seed, config.eta, (d_out, config.r))].append((name, 1))
    return groups


@lru_cache(maxsize=64)
def _structure(config: SeLoRAConfig, modules: tuple[tuple[str, tuple[int, int]], ...]):
    """(modules, ((layout, members), ...)) shared by every adapter of the same structure: a
    thousand tenants' adapters of one base model hold one copy of their module names, not one each
    (about 45 KB per SmolLM2 adapter)."""
    groups = layout_members(config, dict(modules))
    return MappingProxyType(dict(modules)), tuple((layout, tuple(members)) for layout, members in groups.items())


_ALIGN = 64


def _arena(sizes: list[int]) -> list[torch.Tensor]:
    """Byte views of one anonymous memory mapping, one per size (64-byte aligned). An adapter's
    stored form is then one mapping of its own: it never fragments the heap between long-lived
    adapters and transient decode buffers, and its pages go back to the system when it is freed."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // _ALIGN) * _ALIGN
    arena = torch.frombuffer(mmap.mmap(-1, max(total, 1)), dtype=torch.uint8)  # keeps the mapping alive
    return [arena[offset:offset + size] for offset, size in zip(offsets, sizes)]


def _build(config: SeLoRAConfig, base: BaseModelInfo, modules: dict[str, tuple[int, int]],
           stored: Callable[[str], np.ndarray], dtypes: Callable[[str], torch.dtype], bits: int, group_size: int,
           magnitudes: dict[str, torch.Tensor]) -> PackedAdapter:
    """The PackedAdapter of stored tensors given as raw bytes: `stored(key)` the uint8 bytes of
    "{module}.coef_a" / ".coef_b" (and their ".scale", float16, when quantised), `dtypes(key)` the
    values' dtype. Every stack in one anonymous mapping (`_arena`), scales as float32; the bytes
    are copied row by row, without a tensor object per stored tensor (600 for SmolLM2)."""
    shared_modules, groups = _structure(config, tuple(modules.items()))
    keys = [[f"{name}.coef_{'ab'[which]}" for name, which in members] for _, members in groups]
    sizes = []
    for group in keys:
        sizes.append(len(group) * stored(group[0]).nbytes)
        if bits != FLOAT_BITS:
            sizes.append(len(group) * stored(f"{group[0]}.scale").nbytes * 2)  # float16 -> float32
    views = iter(_arena(sizes))
    stacks = []
    for (layout, members), group in zip(groups, keys):
        values = next(views).view(len(group), -1)
        rows = values.numpy()
        for i, key in enumerate(group):
            rows[i] = stored(key)
        scales = None
        if bits != FLOAT_BITS:
            scales = next(views).view(torch.float32).view(len(group), -1)
            out = scales.numpy()
            for i, key in enumerate(group):
                out[i] = stored(f"{key}.scale").view(np.float16)
        stacks.append(LayoutStack(layout, members, values.view(dtypes(group[0])), scales))
    return PackedAdapter(config, base, shared_modules, stacks, bits, group_size, magnitudes)


def pack_bytes(config: SeLoRAConfig, base: BaseModelInfo, modules: dict[str, tuple[int, int]], data: bytes,
               bits: int = FLOAT_BITS, group_size: int = 1) -> PackedAdapter:
    """The PackedAdapter of a coefficient file's safetensors bytes `data` (its structure already
    checked against the manifest), each stored tensor's bytes copied straight into its row."""
    from .checkpoint.safetensors_bytes import _SAFETENSORS  # checkpoint/ imports this module

    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8:8 + n]))
    raw = np.frombuffer(data, dtype=np.uint8, offset=8 + n)

    def stored(key: str) -> np.ndarray:
        start, end = header[key]["data_offsets"]
        return raw[start:end]

    def dtype(key: str) -> torch.dtype:
        return getattr(torch, _SAFETENSORS[header[key]["dtype"]][1])

    magnitudes = {name: torch.frombuffer(bytearray(stored(f"{name}.magnitude")), dtype=dtype(f"{name}.magnitude"))
                  for name in modules if f"{name}.magnitude" in header}
    return _build(config, base, modules, stored, dtype, bits, group_size, magnitudes)


def pack(adapter: SpectralAdapter) -> PackedAdapter:
    """The unquantised packed form of an in-memory adapter (a copy of its coefficients)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in adapter.modules.items():
        tensors[f"{name}.coef_a"], tensors[f"{name}.coef_b"] = mod.coef_a.detach(), mod.coef_b.detach()
    modules = {name: (mod.in_features, mod.out_features) for name, mod in adapter.modules.items()}
    magnitudes = {name: mod.magnitude.detach() for name, mod in adapter.modules.items() if mod.magnitude is not None}
    return _build(adapter.config, adapter.base, modules,
                  lambda key: tensors[key].contiguous().view(torch.uint8).numpy(),
                  lambda key: tensors[key].dtype, FLOAT_BITS, 1, magnitudes)


def dequantised_rows(stack: LayoutStack, bits: int, group_size: int) -> torch.Tensor:
    """The float32 (B, k) coefficients a stack stands for (torch, on the stack's device)."""
    if bits == FLOAT_BITS:
        return stack.values.float()
    from .checkpoint.quant import QuantSpec, dequantize  # checkpoint/ imports this module

    spec, k = QuantSpec(bits, group_size), stack.layout.k
    return torch.stack([dequantize(q, s, k, spec) for q, s in zip(stack.values, stack.scales)])


def materialise_packed(packed: PackedAdapter, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu", compiled: bool | None = None,
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Dense (A, B) of every module, A (r, in_features) and B (out_features, r), in `dtype` on
    `device`; each matrix is a view of a cache-sized chunk (see `materialise.materialise_chunks`).
    `compiled` (default: on the CPU) decodes straight from the stored form (`spectral.fused`);
    otherwise (CUDA) the stacks are dequantised on the device and decoded by the torch path."""
    on_cpu = torch.device(device).type == "cpu" if compiled is None else compiled
    if on_cpu and torch.device(device).type != "cpu":
        raise ValueError(f"the compiled decode runs on the CPU, not {device}")
    result: dict[str, list[torch.Tensor | None]] = {name: [None, None] for name in packed.modules}
    for stack in packed.stacks:
        if on_cpu:
            chunks = decode_stacked(stack.values, stack.scales, packed.bits, packed.group_size, stack.layout)
            chunks = chunks if dtype == torch.float32 else [chunk.to(dtype) for chunk in chunks]
        else:
            on_device = LayoutStack(stack.layout, stack.members, stack.values.to(device),
                                    None if stack.scales is None else stack.scales.to(device))
            rows = dequantised_rows(on_device, packed.bits, packed.group_size)
            chunks = materialise_chunks(rows, stack.layout, dtype, device)
        dense = [matrix for chunk in chunks for matrix in chunk]
        for (name, which), matrix in zip(stack.members, dense):
            result[name][which] = matrix
    return {name: (ab[0], ab[1]) for name, ab in result.items()}  # type: ignore[misc]
