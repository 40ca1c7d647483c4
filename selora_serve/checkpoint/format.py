"""Reading and writing compact spectral checkpoints (format versions 1-3, docs/FORMAT.md).

A checkpoint is a directory with two files:

    selora_config.json               manifest: format, version, config, base model, modules, Omega
                                     (and, version 3, the quantisation of the coefficients)
    selora_coefficients.safetensors  "{module}.coef_a" (k_A,), "{module}.coef_b" (k_B,)
                                     and, for SeDoRA, "{module}.magnitude" (out_features,);
                                     quantised: coef_a / coef_b as int8 (or packed int4) values
                                     with "{module}.coef_a.scale" / ".coef_b.scale" per group

`read_manifest` validates the JSON alone (cheap: no tensors, no allocation proportional to the
declared shapes); `load_checkpoint` also validates every tensor and every Omega checksum, and,
given the base model's config, the fingerprint and each module's shape. Every failure raises
`CheckpointError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..adapter import BaseModelInfo, ModuleCoefficients, SpectralAdapter
from ..atomic import atomic_directory
from ..packed import PackedAdapter, pack_bytes
from ..spectral.fused import FLOAT_BITS
from ..config import ConfigError, SeLoRAConfig
from ..spectral.materialise import MatrixLayout, layout_for
from ..spectral.omega import num_coefficients, omega_digest
from .quant import SCALE_DTYPE_NAME, QuantSpec, dequantize, quantize
from .safetensors_bytes import _SAFETENSORS, all_finite_fast, nonfinite_counts, safetensors_layout

CONFIG_FILE = "selora_config.json"
COEF_FILE = "selora_coefficients.safetensors"
FORMAT_NAME = "selora"
FORMAT_VERSION = 2  # what writers write for unquantised coefficients
QUANT_VERSION = 3  # what they write for quantised ones (version 2 + "quantization", section 10)
# Versions readers accept. Version 1's basis "fourier" (Re(ifft2)) is version 2's "fourier-real";
# version 2's "fourier" is the orthonormal Hartley basis (docs/FORMAT.md, section 9).
READ_VERSIONS = (1, 2, 3)
# Any real linear layer is far smaller; larger declared shapes are refused before anything is
# allocated, so a hostile manifest cannot make a loader reserve huge buffers.
MAX_FEATURES = 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the base model."""

    def __init__(self, path: str | Path, field: str, message: str):
        self.path = str(path)
        self.field = field
        self.reason = message
        super().__init__(f"{path}: {field}: {message}")


@dataclass(frozen=True)
class Manifest:
    """The validated contents of selora_config.json."""

    path: Path
    config: SeLoRAConfig
    base: BaseModelInfo
    coefficient_dtype: str
    modules: dict[str, tuple[int, int]]  # name -> (in_features, out_features)
    omega: dict[str, dict[str, Any]]
    quantization: QuantSpec | None = None  # version 3: how coef_a / coef_b are stored
    version: int = FORMAT_VERSION

    def layouts(self) -> dict[str, MatrixLayout]:
        """Every matrix layout used by the modules, keyed like the manifest's "omega" (computed
        once per manifest: it is read on every load, in the server's request path)."""
        cached = self.__dict__.get("_layouts")
        if cached is None:
            c, basis = self.config, self.config.spectral_basis
            cached = {}
            for shape in {s for d_in, d_out in self.modules.values() for s in ((c.r, d_in), (d_out, c.r))}:
                cached[shape_key(shape)] = layout_for(basis, c.seed, c.eta, shape)
            object.__setattr__(self, "_layouts", cached)
        return dict(cached)

    def num_coefficients(self) -> int:
        c = self.config
        return sum(
            num_coefficients(c.eta, (c.r, i)) + num_coefficients(c.eta, (o, c.r))
            + (o if c.variant == "sedora" else 0)
            for i, o in self.modules.values()
        )


def shape_key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def is_selora_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_FEATURES


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate `path`/selora_config.json (no tensors are read)."""
    root = Path(path)
    file = root / CONFIG_FILE
    if not root.is_dir():
        raise CheckpointError(root, "(directory)", "not found or not a directory")
    if not file.is_file():
        raise CheckpointError(file, "(file)", "missing: not a SeLoRA checkpoint directory")
    return parse_manifest(root, file.read_bytes())


def parse_manifest(root: str | Path, raw: bytes | str) -> Manifest:
    """Validate the bytes of a selora_config.json; `root` is the checkpoint directory they belong
    to (named in errors, and the Manifest's path)."""
    root = Path(root)
    file = root / CONFIG_FILE
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(file, "(file)", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(file, "(file)", "expected a JSON object")

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in data:
            raise CheckpointError(file, key, "missing")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise CheckpointError(file, key, f"expected {getattr(kind, '__name__', kind)}, got {data[key]!r:.80}")
        return data[key]

    if need("format", str) != FORMAT_NAME:
        raise CheckpointError(file, "format", f"expected {FORMAT_NAME!r}, got {data['format']!r}")
    version = need("format_version", int)
    if version not in READ_VERSIONS:
        raise CheckpointError(
            file, "format_version",
            f"unsupported version {version}: this build of selora-serve reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}",
        )
    raw_config = need("config", dict)
    if version == 1:
        if raw_config.get("basis") == "fourier-real":
            raise CheckpointError(file, "config.basis", "'fourier-real' is a version 2 name; version 1 calls it 'fourier'")
        if raw_config.get("basis") == "fourier":
            raw_config = {**raw_config, "basis": "fourier-real"}
    try:
        config = SeLoRAConfig.from_dict(raw_config, where="config")
    except ConfigError as exc:
        raise CheckpointError(file, "config", str(exc).removeprefix("config: ")) from None
    base = need("base_model", dict)
    for key in ("name", "fingerprint"):
        if not isinstance(base.get(key), str) or not base[key]:
            raise CheckpointError(file, f"base_model.{key}", "expected a non-empty string")
    dtype = need("coefficient_dtype", str)
    if dtype not in DTYPES:
        raise CheckpointError(file, "coefficient_dtype", f"expected one of {', '.join(DTYPES)}, got {dtype!r}")
    raw_modules = need("modules", dict)
    if not raw_modules:
        raise CheckpointError(file, "modules", "empty: the adapter adapts no module")
    modules: dict[str, tuple[int, int]] = {}
    for name, spec in raw_modules.items():
        field = f"modules.{name}"
        if not isinstance(spec, dict) or set(spec) != {"in_features", "out_features"}:
            raise CheckpointError(file, field, "expected {\"in_features\": int, \"out_features\": int}")
        d_in, d_out = spec["in_features"], spec["out_features"]
        if not (_positive_int(d_in) and _positive_int(d_out)):
            raise CheckpointError(file, field, f"features must be integers in [1, {MAX_FEATURES}], got {d_in!r} x {d_out!r}")
        if name.rsplit(".", 1)[-1] not in config.target_modules:
            raise CheckpointError(file, field, f"not one of the target modules {list(config.target_modules)}")
        modules[name] = (d_in, d_out)
    omega = need("omega", dict)
    manifest = Manifest(
        root, config,
        BaseModelInfo(base["name"], base["fingerprint"], base.get("num_parameters")),
        dtype, modules, omega, _quantization(file, data, version), version,
    )
    expected = manifest.layouts()
    if set(omega) != set(expected):
        raise CheckpointError(
            file, "omega", f"expected entries for shapes {sorted(expected)}, got {sorted(omega)}"
        )
    for key, layout in expected.items():
        entry = omega[key]
        want = {"spectral_shape": list(layout.spectral_shape), "k": layout.k}
        if not isinstance(entry, dict) or any(entry.get(f) != v for f, v in want.items()):
            raise CheckpointError(file, f"omega.{key}", f"expected {want} (from the config), got {entry!r:.200}")
        if not isinstance(entry.get("sha256"), str):
            raise CheckpointError(file, f"omega.{key}.sha256", "missing")
    return manifest


def _quantization(file: Path, data: dict, version: int) -> QuantSpec | None:
    if "quantization" not in data:
        return None
    raw = data["quantization"]
    if version < QUANT_VERSION:
        raise CheckpointError(file, "quantization", f"a version {QUANT_VERSION} field; this manifest says version "
                              f"{version}")
    if not isinstance(raw, dict) or set(raw) != {"bits", "group_size", "scale_dtype"}:
        raise CheckpointError(file, "quantization", 'expected {"bits": 8|4, "group_size": int, "scale_dtype": '
                              f'"{SCALE_DTYPE_NAME}"}}, got {raw!r:.120}')
    if raw["scale_dtype"] != SCALE_DTYPE_NAME:
        raise CheckpointError(file, "quantization.scale_dtype", f"expected {SCALE_DTYPE_NAME!r}, got {raw['scale_dtype']!r}")
    try:
        return QuantSpec(raw["bits"], raw["group_size"])
    except ValueError as exc:
        raise CheckpointError(file, "quantization", str(exc)) from None


def check_against_base(manifest: Manifest, base_config) -> None:
    """Raise CheckpointError unless the adapter fits the base model described by `base_config`
    (a transformers config, or its `base_model.BaseFacts` when checking many adapters)."""
    from ..base_model import BaseFacts

    file = manifest.path / CONFIG_FILE
    facts = BaseFacts.of(base_config)
    got = facts.fingerprint
    if got != manifest.base.fingerprint:
        raise CheckpointError(
            file, "base_model.fingerprint",
            f"adapter was made for a different base architecture ({manifest.base.name!r}, "
            f"fingerprint {manifest.base.fingerprint[:12]}); the served model's is {got[:12]}",
        )
    try:
        shapes = facts.target_shapes(manifest.config.target_modules)
    except ValueError as exc:
        raise CheckpointError(file, "config.target_modules", str(exc)) from None
    for name, shape in manifest.modules.items():
        if name not in shapes:
            raise CheckpointError(file, f"modules.{name}", "no such module in the base model")
        if shapes[name] != shape:
            raise CheckpointError(
                file, f"modules.{name}",
                f"shape (in, out) {shape} does not fit the base model's {shapes[name]}",
            )


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


