"""Validation of a SeLoRA checkpoint before it is served: everything the engine would hit.

    validate(name, path, base_config, max_rank=32)            # -> Manifest, AdapterError naming the reason
    validate_bytes(name, where, config_bytes, coef_bytes, base)  # the same on bytes already read

Errors name the adapter, the file and the field, never the host's paths. No vLLM or Ray import.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import COEF_FILE, CONFIG_FILE, CheckpointError, Manifest, load_checkpoint
from ..checkpoint.format import check_coefficients
from ..checkpoint.manifest import check_against_base, parse_manifest, read_manifest
from .base import AdapterError

SEDORA_REFUSAL = (
    "SeDoRA (DoRA) adapters cannot fill a LoRA slot (vLLM has no DoRA); serve it merged into the base "
    "model instead: selora-serve --merge CKPT --model BASE"
)


def describe(exc: CheckpointError) -> str:
    """A CheckpointError as one line that names the file and field but not the host's paths."""
    return f"{Path(exc.path).name}: {exc.field}: {exc.reason}"


def _check_servable(name: str, manifest: Manifest, max_rank: int | None) -> None:
    if manifest.config.variant == "sedora":
        raise AdapterError(name, SEDORA_REFUSAL)
    if max_rank is not None and manifest.config.r > max_rank:
        raise AdapterError(
            name, f"rank r={manifest.config.r} exceeds the server's max LoRA rank {max_rank}; "
            "restart with a larger --max-lora-rank",
        )


def validate(name: str, path: str | Path, base_config, *, max_rank: int | None = None) -> Manifest:
    """Fully validate the SeLoRA checkpoint at `path` for the base model `base_config`.

    Reads every tensor and Omega checksum (what the engine would hit) so that a corrupt,
    truncated or mismatched checkpoint is refused with its reason before it reaches the engine.
    Raises AdapterError naming `name` and the reason.
    """
    try:
        manifest = read_manifest(path)
        _check_servable(name, manifest, max_rank)
        load_checkpoint(path, base_config=base_config, manifest=manifest)
    except CheckpointError as exc:
        raise AdapterError(name, describe(exc)) from None
    return manifest


def validate_bytes(name: str, where: str | Path, config: bytes | None, coefficients: bytes | None, base_config, *,
                   max_rank: int | None = None) -> Manifest:
    """`validate` on a SeLoRA checkpoint's two files given as bytes (None: the file is missing);
    `where` is the directory they came from, named in errors (by file name only)."""
    where = Path(where)
    try:
        if config is None:
            raise CheckpointError(where / CONFIG_FILE, "(file)", "missing: not a SeLoRA checkpoint directory")
        if coefficients is None:
            raise CheckpointError(where / COEF_FILE, "(file)", "missing")
        manifest = parse_manifest(where, config)
        _check_servable(name, manifest, max_rank)
        check_against_base(manifest, base_config)
        check_coefficients(manifest, coefficients)
    except CheckpointError as exc:
        raise AdapterError(name, describe(exc)) from None
    return manifest
