"""The adapter store: one or more directories whose sub-directories are adapters, found by name.

    store = AdapterStore(["/srv/adapters", "/srv/more"])
    found = store.find("support-bot")      # -> StoredAdapter | None; raises AdapterNameError
    validate(found.name, found.path, base)  # -> Manifest; raises AdapterError naming the reason

A name is a relative path of one or more components ("support-bot", "team/support-bot"); the
first root that holds it wins. Names that could leave the store are refused before the file
system is touched (absolute paths, "..", ".", empty components, backslashes, NUL), and a name
whose real path (symlinks resolved) lies outside its root is refused too, so a symlink inside
the store cannot expose files elsewhere. A directory is an adapter if it holds a SeLoRA manifest
(selora_config.json) or a dense PEFT LoRA (adapter_config.json); SeLoRA wins if it has both.

The store reads the file system on every `find`, so adapters copied in while a server runs are
found on their first request. It imports nothing from vLLM.

`snapshot(found, root)` copies an adapter's files into a private directory, reading them through
one open descriptor of the adapter's directory: a directory swapped by rename mid-copy (as every
atomic write here does) yields the old files or the new ones, never some of each. The server
validates and loads that copy, so what was validated is what vLLM loads, and an adapter deleted
or replaced in the store later changes nothing until it is unloaded and requested again.
`mark_verified` then records, inside the snapshot, the base model it was fully verified against;
the engine's worker, which decodes the snapshot inside the engine loop (every tenant waits),
skips the checks that read every value for a snapshot so marked (`is_verified`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence
from urllib.parse import quote

from ..atomic import atomic_file
from ..checkpoint import COEF_FILE, CONFIG_FILE, CheckpointError, Manifest, is_selora_checkpoint, load_checkpoint
from ..checkpoint.format import read_manifest
from ..peft_io import PEFT_CONFIG

ENV_DIRS = "SELORA_ADAPTER_DIRS"  # os.pathsep-separated store roots, set by `selora-serve`
MAX_NAME_LENGTH = 255
MAX_SNAPSHOT_BYTES = 8 << 30  # an adapter directory larger than this is refused, not copied
SEDORA_REFUSAL = (
    "SeDoRA (DoRA) adapters cannot fill a LoRA slot (vLLM has no DoRA); serve it merged into the base "
    "model instead: selora-serve --merge CKPT --model BASE"
)


class AdapterError(ValueError):
    """An adapter cannot be served; `status` is the HTTP status it should map to."""

    def __init__(self, name: str, reason: str, status: int = 400):
        self.name = name
        self.reason = reason
        self.status = status
        super().__init__(f"adapter {name!r}: {reason}")


class AdapterNameError(AdapterError):
    """A requested name is not a valid store name (it could leave the store)."""


@dataclass(frozen=True)
class StoredAdapter:
    name: str
    path: Path  # real path, inside `root`
    root: Path
    kind: Literal["selora", "peft"]


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


def describe(exc: CheckpointError) -> str:
    """A CheckpointError as one line that names the file and field but not the host's paths."""
    return f"{Path(exc.path).name}: {exc.field}: {exc.reason}"


def _kind(path: Path) -> Literal["selora", "peft"] | None:
    if is_selora_checkpoint(path):
        return "selora"
    if (path / PEFT_CONFIG).is_file():
        return "peft"
    return None


class AdapterStore:
    def __init__(self, roots: Sequence[str | Path]):
        if not roots:
            raise ValueError("an adapter store needs at least one directory")
        resolved = []
        for root in roots:
            path = Path(root).expanduser()
            if not path.is_dir():
                raise NotADirectoryError(f"{path}: adapter store directory not found")
            resolved.append(path.resolve())
        self.roots: tuple[Path, ...] = tuple(resolved)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "AdapterStore | None":
        value = (os.environ if environ is None else environ).get(ENV_DIRS, "")
        roots = [r for r in value.split(os.pathsep) if r]
        return cls(roots) if roots else None

    def to_env(self) -> str:
        return os.pathsep.join(str(r) for r in self.roots)

    def find(self, name: str) -> StoredAdapter | None:
        """The adapter called `name`, or None if no root holds one by that name."""
        parts = check_name(name)
        for root in self.roots:
            candidate = root.joinpath(*parts)
            if not candidate.is_dir():
                continue
            real = candidate.resolve()
            if real != root and root not in real.parents:
                raise AdapterNameError(name, "refused: it is a link to a directory outside the adapter store")
            kind = _kind(real)
            if kind is not None:
                return StoredAdapter(name, real, root, kind)
        return None

    def adapters(self) -> dict[str, StoredAdapter]:
        """Every adapter in the store (top-level and one nesting level) by name, sorted; first
        root wins. One file-system walk: listings use this rather than `find` per name."""
        seen: dict[str, StoredAdapter] = {}
        for root in self.roots:
            for name in _candidates(root):
                if name in seen:
                    continue
                try:
                    found = self.find(name)
                except AdapterNameError:
                    continue
                if found is not None:
                    seen[name] = found
        return dict(sorted(seen.items()))

    def names(self) -> list[str]:
        return list(self.adapters())

    def manifests(self) -> dict[str, Manifest]:
        """The manifests of every SeLoRA adapter whose manifest reads cleanly (cheap: JSON only)."""
        out = {}
        for name, found in self.adapters().items():
            if found.kind == "selora":
                try:
                    out[name] = read_manifest(found.path)
                except CheckpointError:
                    continue
        return out

    def max_rank(self, default: int = 8) -> int:
        ranks = [m.config.r for m in self.manifests().values()]
        return max(ranks) if ranks else default


def snapshot(found: StoredAdapter, root: str | Path) -> Path:
    """Copy `found`'s files (a SeLoRA checkpoint's two, every regular file of a PEFT one) into a
    directory under `root` named by its name and content, consistently (see the module docstring).

    Snapshots are content-addressed and never changed: loading the same bytes again reuses one,
    so a server keeps one copy per adapter version it served. AdapterError if it cannot be read.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        dir_fd = os.open(found.path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise AdapterError(found.name, f"cannot open its directory ({exc.strerror})") from None
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
    digest = hashlib.sha256()
    try:
        names = (CONFIG_FILE, COEF_FILE) if found.kind == "selora" else sorted(os.listdir(dir_fd))
        total = 0
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue  # missing: validation names the file; a link or unreadable entry is no part of it
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    continue
                digest.update(name.encode() + b"\0")
                with open(tmp / name, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_SNAPSHOT_BYTES:
                            raise AdapterError(found.name, f"adapter directory larger than {MAX_SNAPSHOT_BYTES} bytes")
                        digest.update(chunk)
                        dst.write(chunk)
        # any name (vLLM's lora_name is free text) becomes one safe, bounded path component
        final = root / f"{quote(found.name, safe='')[:100]}-{digest.hexdigest()[:16]}"
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the same bytes were snapshotted before
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(dir_fd)


VERIFIED_MARK = ".selora-verified"  # in a snapshot: the fingerprint of the base it was verified for


def mark_verified(path: str | Path, fingerprint: str) -> None:
    """Record in the snapshot at `path` that it passed `validate` for the base `fingerprint`.

    Written to a temporary name and renamed: a reader sees the whole mark or none. Not synced
    to disk: snapshots live as long as the server process.
    """
    with atomic_file(Path(path) / VERIFIED_MARK, "w", durable=False) as fh:
        fh.write(fingerprint)


def is_verified(path: str | Path, fingerprint: str) -> bool:
    """True if the snapshot at `path` was marked verified for the base `fingerprint`."""
    try:
        return (Path(path) / VERIFIED_MARK).read_text() == fingerprint
    except OSError:
        return False


def _candidates(root: Path) -> Iterable[str]:
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue  # hidden entries include atomic writes still in progress
        if _kind(child) is not None:
            yield child.name
        else:
            for grandchild in sorted(child.iterdir()):
                if not grandchild.name.startswith(".") and grandchild.is_dir():
                    yield f"{child.name}/{grandchild.name}"


def validate(name: str, path: str | Path, base_config, *, max_rank: int | None = None) -> Manifest:
    """Fully validate the SeLoRA checkpoint at `path` for the base model `base_config`.

    Reads every tensor and Omega checksum (what the engine would hit) so that a corrupt,
    truncated or mismatched checkpoint is refused with its reason before it reaches the engine.
    Raises AdapterError naming `name` and the reason.
    """
    try:
        manifest = read_manifest(path)
        if manifest.config.variant == "sedora":
            raise AdapterError(name, SEDORA_REFUSAL)
        if max_rank is not None and manifest.config.r > max_rank:
            raise AdapterError(
                name, f"rank r={manifest.config.r} exceeds the server's max LoRA rank {max_rank}; "
                "restart with a larger --max-lora-rank",
            )
        load_checkpoint(path, base_config=base_config, manifest=manifest)
    except CheckpointError as exc:
        raise AdapterError(name, describe(exc)) from None
    return manifest
