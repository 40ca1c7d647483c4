"""The manifest of a compact spectral checkpoint: `selora_config.json` (docs/FORMAT.md).

`read_manifest` / `parse_manifest` validate the JSON alone, cheaply: no tensors are read and
nothing proportional to the declared shapes is allocated (shapes above `MAX_FEATURES` are
refused first). `check_against_base` checks a manifest against the base model it is meant for.
Every failure raises `CheckpointError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..adapter import BaseModelInfo
from ..config import ConfigError, SeLoRAConfig
from ..spectral.materialise import MatrixLayout, layout_for
from ..spectral.omega import num_coefficients
from .quant import SCALE_DTYPE_NAME, QuantSpec

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
