"""A spectral adapter in memory, and its materialisation into dense LoRA matrices.

    SpectralAdapter.modules[name] = ModuleCoefficients(in_features, out_features, coef_a, coef_b)

`name` is the module's path in the base model (e.g. "model.layers.0.self_attn.q_proj").
A is (r, in_features), B is (out_features, r); each has its own MatrixLayout, shared by every
module of the same shape. This module knows nothing of files (see checkpoint/) or serving.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .config import SeLoRAConfig
from .spectral.fused import FLOAT_BITS, decode_stacked
from .spectral.init import init_coefficients
from .spectral.materialise import MatrixLayout, layout_for, materialise_chunks


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    fingerprint: str
    num_parameters: int | None = None


@dataclass
class ModuleCoefficients:
    in_features: int
    out_features: int
    coef_a: torch.Tensor
    coef_b: torch.Tensor
    magnitude: torch.Tensor | None = None  # SeDoRA: (out_features,)


@dataclass
class SpectralAdapter:
    config: SeLoRAConfig
    base: BaseModelInfo
    modules: dict[str, ModuleCoefficients] = field(default_factory=dict)

    def layout_a(self, module: ModuleCoefficients) -> MatrixLayout:
        c = self.config
        return layout_for(c.spectral_basis, c.seed, c.eta, (c.r, module.in_features))

    def layout_b(self, module: ModuleCoefficients) -> MatrixLayout:
        c = self.config
        return layout_for(c.spectral_basis, c.seed, c.eta, (module.out_features, c.r))

    def layouts(self) -> dict[tuple[int, int], MatrixLayout]:
        """Every distinct matrix layout of this adapter, by spatial shape."""
        out: dict[tuple[int, int], MatrixLayout] = {}
        for mod in self.modules.values():
            for layout in (self.layout_a(mod), self.layout_b(mod)):
                out[layout.shape] = layout
        return out

    @property
    def num_trainable(self) -> int:
        total = 0
        for mod in self.modules.values():
            total += mod.coef_a.numel() + mod.coef_b.numel()
            if mod.magnitude is not None:
                total += mod.magnitude.numel()
        return total

    @property
    def num_dense_lora(self) -> int:
        r = self.config.r
        return sum(r * (m.in_features + m.out_features) for m in self.modules.values())


def init_adapter(
    config: SeLoRAConfig,
    base: BaseModelInfo,
    shapes: dict[str, tuple[int, int]],
    *,
    random_b: bool = False,
    init_seed: int | None = None,
    magnitudes: dict[str, torch.Tensor] | None = None,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> SpectralAdapter:
    """A freshly initialised adapter for modules `shapes[name] = (in_features, out_features)`.

    B's coefficients are zero unless `random_b` (then drawn like A's, for demos and benchmarks).
    `init_seed` seeds the initial values (default: the config's seed); Omega always comes
    from the config's seed. SeDoRA adapters need `magnitudes` (||W0|| per output row).
    """
    generator = torch.Generator().manual_seed(config.seed if init_seed is None else init_seed)
    adapter = SpectralAdapter(config, base)
    for name in progress(sorted(shapes)):
        d_in, d_out = shapes[name]
        mod = ModuleCoefficients(d_in, d_out, torch.empty(0), torch.empty(0))
        la, lb = adapter.layout_a(mod), adapter.layout_b(mod)
        mod.coef_a = init_coefficients(la, generator)
        mod.coef_b = init_coefficients(lb, generator) if random_b else torch.zeros(lb.k)
        if config.variant == "sedora":
            if magnitudes is None or name not in magnitudes:
                raise ValueError(f"SeDoRA needs the magnitude of {name}")
            mod.magnitude = magnitudes[name].detach().float().clone()
        adapter.modules[name] = mod
    return adapter


def materialise_adapter(
    adapter: SpectralAdapter,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Dense (A, B) for every module: A (r, in_features), B (out_features, r), in `dtype`.

    Matrices of one layout are decoded in one batched call into cache-sized chunks (see
    `materialise_chunks`); each returned matrix is a view of its chunk. On the CPU that call is
    the compiled one (`spectral.fused`, on the layout's rows stacked); elsewhere the torch path,
    straight from the modules' coefficient tensors.
    """
    on_cpu = torch.device(device).type == "cpu"
    groups: dict[MatrixLayout, list[tuple[str, int]]] = defaultdict(list)
    for name, mod in adapter.modules.items():
        groups[adapter.layout_a(mod)].append((name, 0))
        groups[adapter.layout_b(mod)].append((name, 1))
    result: dict[str, list[torch.Tensor | None]] = {n: [None, None] for n in adapter.modules}
    for layout, members in groups.items():
        rows = [
            adapter.modules[n].coef_a if which == 0 else adapter.modules[n].coef_b
            for n, which in members
        ]
        if on_cpu:
            stacked = torch.stack([row.detach() for row in rows])
            chunks = decode_stacked(stacked, None, FLOAT_BITS, 1, layout)
            chunks = chunks if dtype == torch.float32 else [chunk.to(dtype) for chunk in chunks]
        else:
            chunks = materialise_chunks(rows, layout, dtype, device)
        dense = [matrix for chunk in chunks for matrix in chunk.unbind(0)]
        for (name, which), matrix in zip(members, dense):
            result[name][which] = matrix
    return {n: (ab[0], ab[1]) for n, ab in result.items()}  # type: ignore[misc]
