"""The adapter store: directories and object-storage prefixes whose sub-directories are adapters.

    store = AdapterStore(["/srv/adapters", "s3://bucket/prod"])
    found = store.find("support-bot")      # -> StoredAdapter | RemoteAdapter | None; AdapterNameError
    verify.validate(found.name, found.path, base)  # -> Manifest; AdapterError naming the reason

A name is a relative path of one or more components ("support-bot", "team/support-bot"); the
first root that holds it wins. Names that could leave the store are refused before the file
system is touched (absolute paths, "..", ".", empty components, backslashes, NUL), and a name
whose real path (symlinks resolved) lies outside its root is refused too, so a symlink inside
the store cannot expose files elsewhere. A directory is an adapter if it holds a SeLoRA manifest
(selora_config.json) or a dense PEFT LoRA (adapter_config.json); SeLoRA wins if it has both.
Roots are `local.LocalRoot`s (directories) and `s3.S3Root`s (s3://BUCKET/PREFIX, laid out the
same way), both behind `base.Root`; remote adapters (`s3.RemoteAdapter`) are fetched into the
store's `cache` (`cache.AdapterCache`) and snapshotted from there (`s3.cached_copy`).

The store reads the file system (or LISTs the bucket) on every `find`, so adapters copied in
while a server runs are found on their first request. It imports neither vLLM nor Ray.

Snapshots (the private copies the engine loads) are `snapshot`'s.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from ..checkpoint import CONFIG_FILE, CheckpointError, Manifest
from ..checkpoint.manifest import parse_manifest, read_manifest
from .base import AdapterError, StoredAdapter, StoreUnavailable, check_name
from .cache import AdapterCache, parse_size
from .local import LocalRoot
from .s3 import RemoteAdapter, S3Root, is_remote

ENV_DIRS = "SELORA_ADAPTER_DIRS"  # the store roots, set by `selora-serve` (see AdapterStore.to_env)
ENV_CACHE_DIR = "SELORA_ADAPTER_CACHE_DIR"  # where remote adapters are cached (--adapter-cache-dir)
ENV_CACHE_BYTES = "SELORA_ADAPTER_CACHE_BYTES"  # its size bound (--adapter-cache-bytes)
ENV_MAX_RANK = "SELORA_MAX_LORA_RANK"  # the engine's rank limit, checked before the engine is asked
DEFAULT_CACHE_BYTES = 16 << 30


logger = logging.getLogger("vllm.selora_serve")


def max_rank_from_env(environ=os.environ) -> int | None:
    """SELORA_MAX_LORA_RANK as set by the planner for the front ends (None: unchecked)."""
    rank = environ.get(ENV_MAX_RANK)
    return int(rank) if rank else None


def cache_dir(environ=os.environ) -> Path:
    """SELORA_ADAPTER_CACHE_DIR, else ~/.cache/selora-serve/adapters (XDG_CACHE_HOME honoured)."""
    if environ.get(ENV_CACHE_DIR):
        return Path(environ[ENV_CACHE_DIR])
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selora-serve" / "adapters"


class AdapterStore:
    """Store roots in order (`LocalRoot` for a directory, `S3Root` for "s3://BUCKET/PREFIX"); the
    first root that holds a name wins. Remote adapters are fetched into `cache` (an AdapterCache;
    by default under SELORA_ADAPTER_CACHE_DIR, created on first use) before they are snapshotted."""

    def __init__(self, roots: Sequence[str | Path], cache: AdapterCache | None = None):
        if not roots:
            raise ValueError("an adapter store needs at least one directory")
        self.roots: tuple = tuple(S3Root(str(r)) if is_remote(r) else LocalRoot(r) for r in roots)
        self._cache = cache

    @property
    def remote_roots(self) -> list[S3Root]:
        return [r for r in self.roots if not isinstance(r, LocalRoot)]

    @property
    def cache(self) -> AdapterCache:
        if self._cache is None:
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
        names = [r.url for r in self.roots]
        return json.dumps(names) if self.remote_roots else os.pathsep.join(names)

    def check_remote(self) -> dict[str, str]:
        """Ask every remote root once: {url: reason} for those that cannot be reached now;
        ValueError for one that is misconfigured (`s3.S3Root.check`)."""
        return {root.url: reason for root in self.remote_roots if (reason := root.check()) is not None}

    def find(self, name: str) -> StoredAdapter | RemoteAdapter | None:
        """The adapter called `name`, or None if no root holds one by that name.

        A root that cannot be asked (StoreUnavailable) answers with the version of `name` last
        fetched from it, if the cache still holds it; else the error propagates (a 503): a later
        root is not asked, since the first root that holds a name wins."""
        check_name(name)
        for root in self.roots:
            try:
                found = root.find(name)
            except StoreUnavailable:
                last = self.cache.last(f"{root.url}/{name}")
                if last is None:
                    raise
                logger.warning("adapter store %s unavailable: serving the cached copy of %s", root.url, name)
                return RemoteAdapter(name, root, last["kind"], (), cached_key=last["key"])
            if found is not None:
                return found
        return None

    def adapters(self) -> dict[str, StoredAdapter | RemoteAdapter]:
        """Every adapter in the store (top-level and one nesting level) by name, sorted; first
        root wins. One file-system walk or LIST per root: listings use this rather than `find`
        per name. A root that cannot be listed contributes its last listing."""
        seen: dict = {}
        for root in self.roots:
            try:
                listed = root.adapters()
            except StoreUnavailable:
                listed = root.last_listing()
            for name, found in listed.items():
                seen.setdefault(name, found)
        return dict(sorted(seen.items()))

    def manifest(self, found) -> Manifest:
        """The manifest of a SeLoRA adapter (CheckpointError if it does not read cleanly); for a
        remote one from the cache if that version is there, else fetched (a small GET)."""
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
