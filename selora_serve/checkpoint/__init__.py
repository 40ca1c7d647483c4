"""The compact spectral checkpoint: on-disk format (docs/FORMAT.md), reading and writing."""

from .format import load_checkpoint, load_packed, save_checkpoint
from .manifest import (
    COEF_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    CheckpointError,
    Manifest,
    is_selora_checkpoint,
    read_manifest,
)

__all__ = [
    "COEF_FILE",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "CheckpointError",
    "Manifest",
    "is_selora_checkpoint",
    "load_checkpoint",
    "load_packed",
    "read_manifest",
    "save_checkpoint",
]
