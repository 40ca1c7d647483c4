"""A store root on local disk: a directory whose sub-directories (one nesting level) are adapters.

A directory is an adapter if it holds a SeLoRA manifest (selora_config.json) or a dense PEFT LoRA
(adapter_config.json); SeLoRA wins if it has both. A name whose real path (symlinks resolved)
lies outside the root is refused, so a symlink inside the store cannot expose files elsewhere.
The directory is read on every call, so adapters copied in while a server runs are found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

from ..checkpoint import is_selora_checkpoint
from ..peft_io import PEFT_CONFIG
from .base import AdapterNameError, StoredAdapter, check_name


def adapter_kind(path: Path) -> Literal["selora", "peft"] | None:
    if is_selora_checkpoint(path):
        return "selora"
    if (path / PEFT_CONFIG).is_file():
        return "peft"
    return None


class LocalRoot:
    """One local directory root (it must exist; its real path is kept)."""

    def __init__(self, path: str | Path):
        path = Path(path).expanduser()
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: adapter store directory not found")
        self.path = path.resolve()
        self.url = str(self.path)

    def __repr__(self) -> str:
        return f"LocalRoot({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, LocalRoot) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def find(self, name: str) -> StoredAdapter | None:
        candidate = self.path.joinpath(*check_name(name))
        if not candidate.is_dir():
            return None
        real = candidate.resolve()
        if real != self.path and self.path not in real.parents:
            raise AdapterNameError(name, "refused: it is a link to a directory outside the adapter store")
        kind = adapter_kind(real)
        return StoredAdapter(name, real, self.path, kind) if kind is not None else None

    def adapters(self) -> dict[str, StoredAdapter]:
        found = {}
        for name in self._candidates():
            try:
                adapter = self.find(name)
            except AdapterNameError:
                continue
            if adapter is not None:
                found[name] = adapter
        return found

    def last_listing(self) -> dict[str, StoredAdapter]:
        return self.adapters()  # a local root is always there to ask

    def _candidates(self) -> Iterable[str]:
        for child in sorted(self.path.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue  # hidden entries include atomic writes still in progress
            if adapter_kind(child) is not None:
                yield child.name
            else:
                for grandchild in sorted(child.iterdir()):
                    if not grandchild.name.startswith(".") and grandchild.is_dir():
                        yield f"{child.name}/{grandchild.name}"
