"""The exceptions that mean "bad input" (shown to users as one clear line, not a traceback)."""

from .checkpoint.manifest import CheckpointError
from .config import ConfigError
from .peft_io import PeftFormatError

USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    ConfigError,
    PeftFormatError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)
