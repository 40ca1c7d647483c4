"""What every store root shares: adapter names, the errors a lookup raises, and a local adapter.

    parts = check_name("team/support-bot")   # ("team", "support-bot"); AdapterNameError if it leaves a root
    raise AdapterError(name, "reason", status=400)

A root (`local.LocalRoot`, `s3.S3Root`) answers `find(name)` with an adapter or None and
`adapters()` with every adapter it holds; both front ends (vLLM's resolver, Ray's loader) reach
roots only through `catalog.AdapterStore`. Nothing here imports vLLM or Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

MAX_NAME_LENGTH = 255
MAX_SNAPSHOT_BYTES = 8 << 30  # an adapter directory larger than this is refused, not copied


class AdapterError(ValueError):
    """An adapter cannot be served; `status` is the HTTP status it should map to."""

    def __init__(self, name: str, reason: str, status: int = 400):
        self.name = name
        self.reason = reason
        self.status = status
        super().__init__(f"adapter {name!r}: {reason}")


class AdapterNameError(AdapterError):
    """A requested name is not a valid store name (it could leave the store)."""


class StoreUnavailable(AdapterError):
    """A store root could not be asked (down, stalled, refused): retry later (HTTP 503)."""

    def __init__(self, name: str, reason: str, cause: str | None = None):
        super().__init__(name, reason, status=503)
        self.cause = cause or reason  # the short reason ("connection failed", "no such bucket", ...)


@dataclass(frozen=True)
class StoredAdapter:
    """An adapter directory on local disk (in a local root, or an adapter cache entry)."""

    name: str
    path: Path  # real path, inside `root`
    root: Path
    kind: Literal["selora", "peft"]
    # Set for a directory whose files are never changed or replaced (an adapter cache entry,
    # `cache.AdapterCache`): its version key. `snapshot` then hard-links its files instead of copying.
    version: str | None = None


class Root(Protocol):
    """One store root. `url` names it in messages and cache keys; `find` and `adapters` may raise
    StoreUnavailable (only remote roots do), after which `last_listing` is what it last listed."""

    url: str

    def find(self, name: str): ...

    def adapters(self) -> dict: ...

    def last_listing(self) -> dict: ...


def check_name(name: str) -> tuple[str, ...]:
    """The path components of a store name; AdapterNameError unless it stays inside a root."""
    if not isinstance(name, str) or not name:
        raise AdapterNameError(str(name), "empty adapter name")
    if len(name) > MAX_NAME_LENGTH:
        raise AdapterNameError(name[:40] + "...", f"name longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in name or "\\" in name:
        raise AdapterNameError(name, "refused: NUL or backslash in adapter name")
    if name.startswith("/") or os.path.isabs(name):
        raise AdapterNameError(name, "refused: adapter names are relative to the adapter store, not paths")
    parts = tuple(name.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise AdapterNameError(name, "refused: '..', '.' and empty components would leave the adapter store")
    return parts
