"""The adapter store: directories and object-storage prefixes whose sub-directories are adapters.

    store = AdapterStore(["/srv/adapters", "s3://bucket/prod"])
    found = store.find("support-bot")      # -> StoredAdapter | RemoteAdapter | None; AdapterNameError
    validate(found.name, found.path, base)  # -> Manifest; raises AdapterError naming the reason

A name is a relative path of one or more components ("support-bot", "team/support-bot"); the
first root that holds it wins. Names that could leave the store are refused before the file
system is touched (absolute paths, "..", ".", empty components, backslashes, NUL), and a name
whose real path (symlinks resolved) lies outside its root is refused too, so a symlink inside
the store cannot expose files elsewhere. A directory is an adapter if it holds a SeLoRA manifest
(selora_config.json) or a dense PEFT LoRA (adapter_config.json); SeLoRA wins if it has both.
Roots given as s3://BUCKET/PREFIX are `remote.S3Root`s, laid out the same way; their adapters
(`remote.RemoteAdapter`) are fetched into the store's `cache` (`adapter_cache.AdapterCache`) and
snapshotted from there (`remote.cached_copy`).

The store reads the file system (or LISTs the bucket) on every `find`, so adapters copied in
while a server runs are found on their first request. It imports nothing from vLLM.

Snapshots (the private copies the engine loads) are `snapshot`'s.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

from ..checkpoint import COEF_FILE, CONFIG_FILE, CheckpointError, Manifest, is_selora_checkpoint, load_checkpoint
from ..checkpoint.format import check_against_base, check_coefficients, parse_manifest, read_manifest
from ..peft_io import PEFT_CONFIG

ENV_DIRS = "SELORA_ADAPTER_DIRS"  # the store roots, set by `selora-serve` (see AdapterStore.to_env)
ENV_CACHE_DIR = "SELORA_ADAPTER_CACHE_DIR"  # where remote adapters are cached (--adapter-cache-dir)
ENV_CACHE_BYTES = "SELORA_ADAPTER_CACHE_BYTES"  # its size bound (--adapter-cache-bytes)
DEFAULT_CACHE_BYTES = 16 << 30
MAX_NAME_LENGTH = 255
MAX_SNAPSHOT_BYTES = 8 << 30  # an adapter directory larger than this is refused, not copied
SEDORA_REFUSAL = (
    "SeDoRA (DoRA) adapters cannot fill a LoRA slot (vLLM has no DoRA); serve it merged into the base "
    "model instead: selora-serve --merge CKPT --model BASE"
)


logger = logging.getLogger("vllm.selora_serve")


def cache_dir(environ=os.environ) -> Path:
    """SELORA_ADAPTER_CACHE_DIR, else ~/.cache/selora-serve/adapters (XDG_CACHE_HOME honoured)."""
    if environ.get(ENV_CACHE_DIR):
        return Path(environ[ENV_CACHE_DIR])
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selora-serve" / "adapters"


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
    # Set for a directory whose files are never changed or replaced (an adapter cache entry,
    # `adapter_cache`): its version key. `snapshot` then hard-links its files instead of copying.
    version: str | None = None


def _find_local(root: Path, name: str, parts: tuple[str, ...]) -> "StoredAdapter | None":
    candidate = root.joinpath(*parts)
    if not candidate.is_dir():
        return None
    real = candidate.resolve()
    if real != root and root not in real.parents:
        raise AdapterNameError(name, "refused: it is a link to a directory outside the adapter store")
    kind = _kind(real)
    return StoredAdapter(name, real, root, kind) if kind is not None else None


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
    """Store roots in order: local directories (Path) and object-storage roots (`remote.S3Root`,
    from "s3://BUCKET/PREFIX"). Remote adapters are fetched into `cache` (an AdapterCache; by
    default under SELORA_ADAPTER_CACHE_DIR, created on first use) before they are snapshotted."""

    def __init__(self, roots: Sequence[str | Path], cache=None):
        from .remote import S3Root, is_remote

        if not roots:
            raise ValueError("an adapter store needs at least one directory")
        resolved: list = []
        for root in roots:
            if is_remote(root):
                resolved.append(S3Root(str(root)))
                continue
            path = Path(root).expanduser()
            if not path.is_dir():
                raise NotADirectoryError(f"{path}: adapter store directory not found")
            resolved.append(path.resolve())
        self.roots: tuple = tuple(resolved)
        self._cache = cache

    @property
    def remote_roots(self) -> list:
        return [r for r in self.roots if not isinstance(r, Path)]

    @property
    def cache(self):
        if self._cache is None:
            from .adapter_cache import AdapterCache, parse_size

            self._cache = AdapterCache(cache_dir(), parse_size(os.environ.get(ENV_CACHE_BYTES) or DEFAULT_CACHE_BYTES))
        return self._cache

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "AdapterStore | None":
        value = (os.environ if environ is None else environ).get(ENV_DIRS, "")
        roots = json.loads(value) if value.startswith("[") else [r for r in value.split(os.pathsep) if r]
        return cls(roots) if roots else None

    def to_env(self) -> str:
        """The value of SELORA_ADAPTER_DIRS: os.pathsep-separated directories, or a JSON list
        when a root is a URL (which holds a colon)."""
        names = [str(r) if isinstance(r, Path) else r.url for r in self.roots]
        return json.dumps(names) if self.remote_roots else os.pathsep.join(names)

    def check_remote(self) -> dict[str, str]:
        """Ask every remote root once: {url: reason} for those that cannot be reached now;
        ValueError for one that is misconfigured (`remote.S3Root.check`)."""
        return {root.url: reason for root in self.remote_roots if (reason := root.check()) is not None}

    def find(self, name: str) -> "StoredAdapter | RemoteAdapter | None":
        """The adapter called `name`, or None if no root holds one by that name.

        A remote root that cannot be asked (StoreUnavailable) answers with the version of `name`
        last fetched from it, if the cache still holds it; else the error propagates (a 503):
        a later root is not asked, since the first root that holds a name wins."""
        parts = check_name(name)
        for root in self.roots:
            found = _find_local(root, name, parts) if isinstance(root, Path) else self._find_remote(root, name)
            if found is not None:
                return found
        return None

    def _find_remote(self, root, name: str):
        from .remote import RemoteAdapter, StoreUnavailable

        try:
            return root.find(name)
        except StoreUnavailable:
            last = self.cache.last(f"{root.url}/{name}")
            if last is None:
                raise
            logger.warning("adapter store %s unavailable: serving the cached copy of %s", root.url, name)
            return RemoteAdapter(name, root, last["kind"], (), cached_key=last["key"])

    def adapters(self) -> dict[str, "StoredAdapter | RemoteAdapter"]:
        """Every adapter in the store (top-level and one nesting level) by name, sorted; first
        root wins. One file-system walk or LIST per root: listings use this rather than `find`
        per name. A remote root that cannot be listed contributes its last listing."""
        from .remote import StoreUnavailable

        seen: dict = {}
        for root in self.roots:
            if not isinstance(root, Path):
                try:
                    listed = root.adapters()
                except StoreUnavailable:
                    listed = root.last_listing()
                for name, found in listed.items():
                    seen.setdefault(name, found)
                continue
            for name in _candidates(root):
                if name in seen:
                    continue
                try:
                    found = _find_local(root, name, check_name(name))
                except AdapterNameError:
                    continue
                if found is not None:
                    seen[name] = found
        return dict(sorted(seen.items()))

    def manifest(self, found) -> Manifest:
        """The manifest of a SeLoRA adapter (CheckpointError if it does not read cleanly); for a
        remote one from the cache if that version is there, else fetched (a small GET)."""
        from .remote import RemoteAdapter

        if not isinstance(found, RemoteAdapter):
            return read_manifest(found.path)
        if self.cache.has(found.key):
            return read_manifest(self.cache.path(found.key))
        return parse_manifest(Path(found.name), found.root.read(found, CONFIG_FILE))

    def names(self) -> list[str]:
        return list(self.adapters())

    def manifests(self) -> dict[str, Manifest]:
        """The manifests of every SeLoRA adapter whose manifest reads cleanly (cheap: JSON only)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(found):
            try:
                return self.manifest(found)
            except (CheckpointError, AdapterError):
                return None

        selora = {name: found for name, found in self.adapters().items() if found.kind == "selora"}
        with ThreadPoolExecutor(8) as pool:  # remote manifests are one small GET each
            read = dict(zip(selora, pool.map(one, selora.values())))
        return {name: m for name, m in read.items() if m is not None}

    def max_rank(self, default: int = 8) -> int:
        ranks = [m.config.r for m in self.manifests().values()]
        return max(ranks) if ranks else default


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
