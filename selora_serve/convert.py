"""The operations behind `selora-convert`, as plain functions (the CLI only parses and prints).

Each reads its inputs, validates them, transforms in memory and writes atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .adapter import BaseModelInfo, ModuleCoefficients, SpectralAdapter, init_adapter
from .base_model import fingerprint, load_config, num_parameters, target_shapes
from .checkpoint import load_checkpoint, read_manifest, save_checkpoint
from .checkpoint.format import bytes_on_disk, dense_lora_bytes
from .checkpoint.quant import QuantSpec
from .config import SeLoRAConfig
from .merge import merge_model_dir
from .peft_io import read_peft, write_peft
from .spectral.materialise import materialise
from .spectral.project import project

Progress = Callable[[Iterable], Iterable]


def _no_progress(it: Iterable) -> Iterable:
    return it


def base_info(base_dir: str | Path, config=None) -> BaseModelInfo:
    config = config or load_config(base_dir)
    return BaseModelInfo(str(base_dir), fingerprint(config), num_parameters(config))


def init_checkpoint(
    base_dir: str | Path,
    out: str | Path,
    config: SeLoRAConfig,
    *,
    random_b: bool = False,
    init_seed: int | None = None,
    coefficient_dtype: str = "float32",
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> Path:
    """A freshly initialised adapter for the model in `base_dir`, saved at `out`."""
    base_config = load_config(base_dir)
    shapes = target_shapes(base_config, config.target_modules)
    magnitudes = None
    if config.variant == "sedora":
        magnitudes = _row_norms(Path(base_dir), shapes)
    adapter = init_adapter(
        config, base_info(base_dir, base_config), shapes,
        random_b=random_b, init_seed=init_seed, magnitudes=magnitudes, progress=progress,
    )
    return save_checkpoint(adapter, out, coefficient_dtype=coefficient_dtype, overwrite=overwrite)


def _row_norms(base_dir: Path, shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """||W0|| per output row of each adapted module: DoRA's initial magnitude."""
    from safetensors import safe_open

    from .merge import weight_shards

    norms = {}
    for shard in weight_shards(base_dir):
        with safe_open(str(base_dir / shard), framework="pt") as fh:
            for name in shapes:
                if f"{name}.weight" in fh.keys():
                    norms[name] = torch.linalg.norm(fh.get_tensor(f"{name}.weight").float(), dim=1)
    return norms


def to_peft(ckpt: str | Path, out: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    return write_peft(load_checkpoint(ckpt), out, dtype=dtype, overwrite=overwrite)


def merge(
    ckpt: str | Path, base_dir: str | Path, out: str | Path, *, overwrite: bool = False, progress: Progress = _no_progress
) -> Path:
    adapter = load_checkpoint(ckpt, base_config=load_config(base_dir))
    return merge_model_dir(adapter, base_dir, out, overwrite=overwrite, progress=progress)


@dataclass
class ProjectionReport:
    relative_error: float  # ||sum dW' - dW|| / ||dW|| over all modules (Frobenius)
    worst_module: str
    worst_error: float
    out: Path


def from_peft(
    peft_dir: str | Path,
    out: str | Path,
    *,
    eta: float,
    basis: str = "wavelet",
    wavelet: str | None = "haar",
    seed: int = 0,
    base_dir: str | Path | None = None,
    coefficient_dtype: str = "float32",
    overwrite: bool = False,
    progress: Progress = _no_progress,
    quantization: QuantSpec | None = None,
) -> ProjectionReport:
    """Project a dense PEFT LoRA onto a spectral support; report the error of dW = B A."""
    dense = read_peft(peft_dir)
    base_dir = base_dir or dense.base_model_name
    if base_dir is None or not Path(base_dir).is_dir():
        raise FileNotFoundError(
            f"{peft_dir}: base model {dense.base_model_name!r} is not a local directory; pass --base MODEL_DIR"
        )
    base_config = load_config(base_dir)
    if dense.magnitudes:
        raise ValueError(f"{peft_dir}: DoRA adapters are not supported by from-peft yet")
    targets = tuple(sorted({n.rsplit(".", 1)[-1] for n in dense.weights}))
    config = SeLoRAConfig(
        basis=basis, wavelet=wavelet if basis == "wavelet" else None, eta=eta, r=dense.r,
        alpha=dense.alpha, seed=seed, target_modules=targets,
    )
    shapes = target_shapes(base_config, targets)
    adapter = SpectralAdapter(config, base_info(base_dir, base_config))
    for name, (a, b) in dense.weights.items():
        if shapes.get(name) != (a.shape[1], b.shape[0]):
            raise ValueError(f"{peft_dir}: {name}: shapes do not fit the base model {base_dir}")
        adapter.modules[name] = ModuleCoefficients(a.shape[1], b.shape[0], torch.empty(0), torch.empty(0))
    # Project every matrix of one layout in one batched solve.
    groups: dict[Any, list[tuple[str, int]]] = {}
    for name, mod in adapter.modules.items():
        groups.setdefault(adapter.layout_a(mod), []).append((name, 0))
        groups.setdefault(adapter.layout_b(mod), []).append((name, 1))
    for layout, members in progress(list(groups.items())):
        stack = torch.stack([dense.weights[n][which].float() for n, which in members])
        for (name, which), coef in zip(members, project(stack, layout).unbind(0)):
            setattr(adapter.modules[name], "coef_a" if which == 0 else "coef_b", coef.clone())
    num = den = 0.0
    worst = ("", -1.0)
    for name, mod in adapter.modules.items():
        a, b = (x.float() for x in dense.weights[name])
        a2 = materialise(mod.coef_a, adapter.layout_a(mod))
        b2 = materialise(mod.coef_b, adapter.layout_b(mod))
        diff = torch.linalg.norm(b2 @ a2 - b @ a).item() ** 2
        ref = torch.linalg.norm(b @ a).item() ** 2
        num, den = num + diff, den + ref
        err = (diff / ref) ** 0.5 if ref > 0 else 0.0
        if err > worst[1]:
            worst = (name, err)
    path = save_checkpoint(adapter, out, coefficient_dtype=coefficient_dtype, overwrite=overwrite,
                           quantization=quantization)
    return ProjectionReport((num / den) ** 0.5 if den > 0 else 0.0, worst[0], worst[1], path)


@dataclass
class QuantReport:
    out: Path
    bits: int
    group_size: int
    bytes_before: int
    bytes_after: int
    relative_error: float  # ||coef_hat - coef|| / ||coef|| over every coefficient
    max_abs_error: float


def quantize(ckpt: str | Path, out: str | Path, *, bits: int, group_size: int = 128,
             overwrite: bool = False) -> QuantReport:
    """Write `ckpt` with its coefficients quantised to `bits` (format version 3) at `out`, and
    report the bytes and the error of the dequantised coefficients against the originals."""
    spec = QuantSpec(bits, group_size)
    manifest = read_manifest(ckpt)
    if manifest.quantization is not None:
        raise ValueError(f"{ckpt}: already quantised ({manifest.quantization.bits} bits); quantise the original")
    adapter = load_checkpoint(ckpt, manifest=manifest)
    path = save_checkpoint(adapter, out, coefficient_dtype=manifest.coefficient_dtype, overwrite=overwrite,
                           quantization=spec)
    back = load_checkpoint(path)
    num = den = worst = 0.0
    for name, m in adapter.modules.items():
        for before, after in ((m.coef_a, back.modules[name].coef_a), (m.coef_b, back.modules[name].coef_b)):
            diff = after.float() - before.float()
            num += float(diff.square().sum())
            den += float(before.float().square().sum())
            worst = max(worst, float(diff.abs().max()))
    return QuantReport(path, bits, group_size, bytes_on_disk(ckpt), bytes_on_disk(path),
                       (num / den) ** 0.5 if den > 0 else 0.0, worst)


def inspect(ckpt: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Facts about a checkpoint: what it trains, what it costs on disk against dense LoRA."""
    manifest = read_manifest(ckpt)
    if verify:
        load_checkpoint(ckpt)
    c = manifest.config
    trainable = manifest.num_coefficients()
    dense_params = sum(c.r * (i + o) for i, o in manifest.modules.values())
    on_disk = bytes_on_disk(ckpt)
    dense_bytes = dense_lora_bytes(manifest)
    base_params = manifest.base.num_parameters
    return {
        "path": str(ckpt),
        "basis": c.basis,
        "wavelet": c.wavelet,
        "variant": c.variant,
        "eta": c.eta,
        "r": c.r,
        "alpha": c.alpha,
        "seed": c.seed,
        "target_modules": list(c.target_modules),
        "modules": len(manifest.modules),
        "base_model": manifest.base.name,
        "base_fingerprint": manifest.base.fingerprint,
        "base_parameters": base_params,
        "trainable_parameters": trainable,
        "trainable_percent": (100.0 * trainable / base_params) if base_params else None,
        "dense_lora_parameters": dense_params,
        "coefficient_dtype": manifest.coefficient_dtype,
        "format_version": manifest.version,
        "coefficient_bits": manifest.quantization.bits if manifest.quantization else None,
        "quant_group_size": manifest.quantization.group_size if manifest.quantization else None,
        "bytes_on_disk": on_disk,
        "dense_lora_bytes": dense_bytes,
        "bytes_ratio": on_disk / dense_bytes,
        "verified": verify,
    }
