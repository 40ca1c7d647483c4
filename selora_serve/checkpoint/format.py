"""Reading and writing compact spectral checkpoints (format versions 1-3, docs/FORMAT.md).

A checkpoint is a directory with two files:

    selora_config.json               manifest: format, version, config, base model, modules, Omega
                                     (and, version 3, the quantisation of the coefficients)
    selora_coefficients.safetensors  "{module}.coef_a" (k_A,), "{module}.coef_b" (k_B,)
                                     and, for SeDoRA, "{module}.magnitude" (out_features,);
                                     quantised: coef_a / coef_b as int8 (or packed int4) values
                                     with "{module}.coef_a.scale" / ".coef_b.scale" per group

`read_manifest` (`manifest.py`) validates the JSON alone (cheap: no tensors, no allocation
proportional to the declared shapes); `load_checkpoint` also validates every tensor and every
Omega checksum, and, given the base model's config, the fingerprint and each module's shape.
Every failure raises `CheckpointError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..adapter import ModuleCoefficients, SpectralAdapter
from ..atomic import atomic_directory
from ..packed import PackedAdapter, pack_bytes
from ..spectral.fused import FLOAT_BITS
from ..spectral.omega import num_coefficients, omega_digest
from .manifest import (
    COEF_FILE,
    CONFIG_FILE,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    QUANT_VERSION,
    CheckpointError,
    Manifest,
    check_against_base,
    read_manifest,
    shape_key,
)
from .quant import SCALE_DTYPE_NAME, QuantSpec, dequantize, quantize
from .safetensors_bytes import _SAFETENSORS, all_finite_fast, nonfinite_counts, safetensors_layout


def _check_tensor_names(file: Path, expected, found) -> None:
    """The coefficient file holds exactly the manifest's tensors: else name the first odd one."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(file, missing[0], f"tensor missing ({len(missing)} missing in all)")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(file, extra[0], "unexpected tensor (not declared by the manifest)")


def _coefficient_counts(manifest: Manifest) -> dict[str, int]:
    """{"P.coef_a" / "P.coef_b": k} of every module."""
    c = manifest.config
    out = {}
    for name, (d_in, d_out) in manifest.modules.items():
        out[f"{name}.coef_a"] = num_coefficients(c.eta, (c.r, d_in))
        out[f"{name}.coef_b"] = num_coefficients(c.eta, (d_out, c.r))
    return out


def _expected_tensors(manifest: Manifest) -> dict[str, tuple[tuple[int], str]]:
    """{tensor name: (shape, torch dtype name)} of the coefficient file."""
    q, dtype = manifest.quantization, manifest.coefficient_dtype
    out: dict[str, tuple[tuple[int], str]] = {}
    for key, k in _coefficient_counts(manifest).items():
        if q is None:
            out[key] = ((k,), dtype)
        else:
            out[key] = ((q.stored_len(k),), str(q.stored_dtype()).removeprefix("torch."))
            out[f"{key}.scale"] = ((q.groups(k),), SCALE_DTYPE_NAME)
    if manifest.config.variant == "sedora":
        for name, (_, d_out) in manifest.modules.items():
            out[f"{name}.magnitude"] = ((d_out,), dtype)
    return out


def _shape_error(manifest: Manifest, key: str, got: tuple, shape: tuple) -> str:
    if manifest.quantization is None or key.endswith(".magnitude"):
        return (f"has {got[0] if len(got) == 1 else got} coefficients, expected k = {shape[0]} "
                "(round((1 - eta) * m * n) for this module)")
    return f"has shape {list(got)}, expected {list(shape)} for {manifest.quantization.bits}-bit coefficients"


def _coefficient_bytes(manifest: Manifest) -> bytes:
    file = manifest.path / COEF_FILE
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(file, "(file)", "missing") from None
    except OSError as exc:
        raise CheckpointError(file, "(file)", f"cannot read ({exc})") from None


def _read_tensors(manifest: Manifest, check_values: bool = True, data: bytes | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    file = manifest.path / COEF_FILE
    expected = _expected_tensors(manifest)
    data = _coefficient_bytes(manifest) if data is None else data  # one read, one parse
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise CheckpointError(file, "(file)", f"corrupt or truncated safetensors ({exc})") from None
    _check_tensor_names(file, expected, tensors)
    for key, (shape, dtype) in expected.items():
        got = tensors[key]
        if tuple(got.shape) != shape:
            raise CheckpointError(file, key, _shape_error(manifest, key, tuple(got.shape), shape))
        if str(got.dtype).removeprefix("torch.") != dtype:
            name = str(got.dtype).removeprefix("torch.")
            raise CheckpointError(file, key, f"dtype {name}, manifest says {dtype}")
    # One reduction instead of an elementwise test: any NaN/Inf makes the sum non-finite. (So
    # can an overflow of finite values; the exact test below then finds no culprit.) Quantised
    # files mix integer values with float scales: their float tensors are tested one by one.
    uniform = manifest.quantization is None
    if check_values and not (uniform and all_finite_fast(data, DTYPES[manifest.coefficient_dtype])):
        for key, (_, dtype) in expected.items():  # slow path: names the culprit
            if dtype in DTYPES or dtype == SCALE_DTYPE_NAME:
                bad = int((~torch.isfinite(tensors[key])).sum())
                if bad:
                    raise CheckpointError(file, key, f"{bad} NaN/Inf value(s); coefficients must be finite")
    return {key: tensors[key] for key in expected}


def _check_structure(manifest: Manifest, data: bytes) -> dict[str, tuple[tuple[int], str]]:
    """The tensors' names, counts and dtypes in the coefficient file's bytes `data`, from its
    header alone; the expected {name: (shape, dtype)}. CheckpointError naming the file and field."""
    file = manifest.path / COEF_FILE
    try:
        layout = safetensors_layout(data)
    except ValueError as exc:
        raise CheckpointError(file, "(file)", f"corrupt or truncated safetensors ({exc})") from None
    expected = _expected_tensors(manifest)
    _check_tensor_names(file, expected, layout)
    for key, (shape, want) in expected.items():
        code, got = layout[key]
        if got != shape:
            raise CheckpointError(file, key, _shape_error(manifest, key, got, shape))
        if _SAFETENSORS[code][1] != want:
            raise CheckpointError(file, key, f"dtype {_SAFETENSORS[code][1]}, manifest says {want}")
    return expected


def check_coefficients(manifest: Manifest, data: bytes) -> None:
    """Everything `load_checkpoint(verify=True)` checks in the coefficient file's bytes `data`
    (tensor names, counts, dtypes, every value finite), from its header and one reduction over
    its data region, without building a tensor. CheckpointError naming the file and field."""
    file = manifest.path / COEF_FILE
    expected = _check_structure(manifest, data)
    if manifest.quantization is not None:  # integer values: only the float tensors can hold NaN/Inf
        floats = {key: (torch.float16 if want == SCALE_DTYPE_NAME else DTYPES[want])
                  for key, (_, want) in expected.items() if want in DTYPES or want == SCALE_DTYPE_NAME}
        for key, bad in nonfinite_counts(data, floats).items():
            if bad:
                raise CheckpointError(file, key, f"{bad} NaN/Inf value(s); coefficients must be finite")
    elif not all_finite_fast(data, DTYPES[manifest.coefficient_dtype]):
        _read_tensors(manifest, check_values=True, data=data)  # the exact test, to name the culprit
    verify_omega(manifest)


def verify_omega(manifest: Manifest) -> None:
    """Regenerate every Omega from the seed and compare it with the recorded checksum."""
    file = manifest.path / CONFIG_FILE
    for key, layout in manifest.layouts().items():
        if omega_digest(layout.seed, layout.spectral_shape, layout.k) != manifest.omega[key]["sha256"]:
            raise CheckpointError(
                file, f"omega.{key}.sha256",
                "positions regenerated from the seed do not match the checksum: the checkpoint "
                "was written by an incompatible index generator or its seed was altered",
            )


def _load_stored(path, base_config, verify: bool, manifest: Manifest | None,
                 coefficients: bytes | None) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """The manifest and the stored tensors, validated as `load_checkpoint` documents."""
    if manifest is None or Path(manifest.path) != Path(path):
        manifest = read_manifest(path)
    if base_config is not None:
        check_against_base(manifest, base_config)
    tensors = _read_tensors(manifest, check_values=verify, data=coefficients)
    if verify:
        verify_omega(manifest)
    return manifest, tensors


def load_checkpoint(
    path: str | Path, *, base_config=None, verify: bool = True, manifest: Manifest | None = None,
    coefficients: bytes | None = None,
) -> SpectralAdapter:
    """Read and fully validate a checkpoint; with `base_config`, also check it fits that model.

    `verify=False` skips the checks that read every value (NaN/Inf) or regenerate every Omega,
    for a checkpoint already verified whose bytes cannot have changed since (a server's
    snapshot); the manifest and the tensors' names, counts and dtypes are still checked.
    `manifest`: `read_manifest(path)` (or `parse_manifest`), when the caller has already read it;
    `coefficients`: the bytes of its selora_coefficients.safetensors, likewise (nothing is then
    read from `path`, which only names the checkpoint in errors). Quantised coefficients come
    back dequantised (`load_packed` keeps them as stored).
    """
    manifest, tensors = _load_stored(path, base_config, verify, manifest, coefficients)
    q = manifest.quantization
    if q is not None:  # the dequantised coefficients, in the manifest's coefficient dtype
        dtype = DTYPES[manifest.coefficient_dtype]
        for key, k in _coefficient_counts(manifest).items():
            tensors[key] = dequantize(tensors[key], tensors.pop(f"{key}.scale"), k, q).to(dtype)
    adapter = SpectralAdapter(manifest.config, manifest.base)
    for name, (d_in, d_out) in manifest.modules.items():
        adapter.modules[name] = ModuleCoefficients(
            d_in, d_out, tensors[f"{name}.coef_a"], tensors[f"{name}.coef_b"], tensors.get(f"{name}.magnitude")
        )
    return adapter


def load_packed(
    path: str | Path, *, base_config=None, verify: bool = True, manifest: Manifest | None = None,
    coefficients: bytes | None = None,
) -> PackedAdapter:
    """As `load_checkpoint` (same checks, same arguments), but the coefficients as stored, one
    stack per layout (`packed.PackedAdapter`): a quantised checkpoint stays quantised."""
    if manifest is None or Path(manifest.path) != Path(path):
        manifest = read_manifest(path)
    if base_config is not None:
        check_against_base(manifest, base_config)
    data = _coefficient_bytes(manifest) if coefficients is None else coefficients
    if verify:
        check_coefficients(manifest, data)  # every check of `load_checkpoint`, on the bytes
    else:
        _check_structure(manifest, data)
    q = manifest.quantization
    bits, group = (FLOAT_BITS, 1) if q is None else (q.bits, q.group_size)
    # straight from the file's bytes into the adapter's stacks: no tensor per stored tensor
    return pack_bytes(manifest.config, manifest.base, manifest.modules, data, bits, group)


def manifest_dict(adapter: SpectralAdapter, coefficient_dtype: str,
                  quantization: QuantSpec | None = None) -> dict[str, Any]:
    layouts = {}
    for layout in adapter.layouts().values():
        layouts[shape_key(layout.shape)] = {
            "spectral_shape": list(layout.spectral_shape),
            "k": layout.k,
            "sha256": omega_digest(layout.seed, layout.spectral_shape, layout.k),
        }
    base = {"name": adapter.base.name, "fingerprint": adapter.base.fingerprint}
    if adapter.base.num_parameters is not None:
        base["num_parameters"] = adapter.base.num_parameters
    out = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION if quantization is None else QUANT_VERSION,
        "created_by": f"selora-serve {__version__}",
        "config": adapter.config.to_dict(),
        "base_model": base,
        "coefficient_dtype": coefficient_dtype,
        "modules": {
            name: {"in_features": m.in_features, "out_features": m.out_features}
            for name, m in sorted(adapter.modules.items())
        },
        "omega": dict(sorted(layouts.items())),
    }
    if quantization is not None:
        out["quantization"] = quantization.to_dict()
    return out


def save_checkpoint(
    adapter: SpectralAdapter,
    path: str | Path,
    *,
    coefficient_dtype: str = "float32",
    overwrite: bool = False,
    quantization: QuantSpec | None = None,
) -> Path:
    """Write `adapter` atomically as a checkpoint directory at `path`; with `quantization`, its
    coefficients as `quantization.bits`-bit values and scales (format version 3, lossy; the
    magnitudes of SeDoRA stay in `coefficient_dtype`)."""
    from safetensors.torch import save_file

    if coefficient_dtype not in DTYPES:
        raise ValueError(f"coefficient_dtype must be one of {', '.join(DTYPES)}, got {coefficient_dtype!r}")
    dtype = DTYPES[coefficient_dtype]
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in adapter.modules.items():
        tensors[f"{name}.coef_a"] = mod.coef_a.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.coef_b"] = mod.coef_b.detach().to("cpu", dtype).contiguous()
        if adapter.config.variant == "sedora":
            if mod.magnitude is None:
                raise ValueError(f"SeDoRA adapter has no magnitude for {name}")
            tensors[f"{name}.magnitude"] = mod.magnitude.detach().to("cpu", dtype).contiguous()
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{key}: refusing to save NaN/Inf coefficients")
    if quantization is not None:
        for name in adapter.modules:
            for key in (f"{name}.coef_a", f"{name}.coef_b"):
                tensors[key], tensors[f"{key}.scale"] = quantize(tensors[key], quantization)
    manifest = manifest_dict(adapter, coefficient_dtype, quantization)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / COEF_FILE), metadata={"format": FORMAT_NAME,
                                                           "format_version": str(manifest["format_version"])})
        (tmp / CONFIG_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(path)


def bytes_on_disk(path: str | Path) -> int:
    root = Path(path)
    return sum(f.stat().st_size for f in (root / CONFIG_FILE, root / COEF_FILE) if f.is_file())


def dense_lora_bytes(manifest: Manifest, dtype: str | None = None) -> int:
    """Bytes of the tensors of the same adapter as a dense LoRA, at `dtype` (default: the
    coefficients' dtype), without file headers."""
    size = torch.tensor([], dtype=DTYPES[dtype or manifest.coefficient_dtype]).element_size()
    r = manifest.config.r
    return size * sum(r * (i + o) for i, o in manifest.modules.values())


