"""From a store name to a directory an engine may load: find, fetch, snapshot, verify.

    path = checkout(store, "support-bot", base_facts, max_rank=32)   # -> Path | None (not in the store)

Both front ends call this (vLLM's resolver in `vllm_ext.resolver`, Ray's loader in `ray.loader`),
so they answer every name alike: None for an unknown name (404), AdapterError for a corrupt or
unservable one (400), StoreUnavailable when a bucket cannot be asked (503).

Snapshots live under `snapshot_root()`: SELORA_SNAPSHOT_DIR when set (`selora-serve` sets a fresh
one per server and removes it), else a directory of this process's own, named with its pid and
removed at exit. `remove_stale` removes those left by processes that died without their exit
handlers (a killed Ray replica), so restarts do not fill the temporary directory. No vLLM or Ray
import.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..base_model import BaseFacts
from ..envdir import env_scratch_dir
from .catalog import AdapterStore
from .s3 import RemoteAdapter, cached_copy
from .snapshot import snapshot

logger = logging.getLogger("vllm.selora_serve")

ENV_SNAPSHOTS = "SELORA_SNAPSHOT_DIR"  # set by `selora-serve`; else a directory per process
PREFIX = "selora-serve-snapshots-"
_OWN = re.compile(re.escape(PREFIX) + r"(\d+)-")
_own_root: Path | None = None

FetchObserver = Callable[[str, int, float], None]  # (adapter, bytes, seconds) of a fetch from a bucket


def _prefix() -> str:
    return f"{PREFIX}{os.getpid()}-"


def snapshot_dir(environ=os.environ):
    """Run the body with SELORA_SNAPSHOT_DIR set to a fresh directory, removed afterwards."""
    return env_scratch_dir(ENV_SNAPSHOTS, _prefix(), environ)


def snapshot_root() -> Path:
    global _own_root
    if os.environ.get(ENV_SNAPSHOTS):
        return Path(os.environ[ENV_SNAPSHOTS])
    if _own_root is None:  # plain `vllm serve` with the plugin, or a Ray replica: our own, removed at exit
        remove_stale()
        _own_root = Path(tempfile.mkdtemp(prefix=_prefix()))
        atexit.register(shutil.rmtree, _own_root, True)
    return _own_root


def release_snapshot_root() -> None:
    """Remove this process's own snapshot directory now (a Ray replica shutting down)."""
    global _own_root
    if _own_root is not None:
        shutil.rmtree(_own_root, ignore_errors=True)
        _own_root = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(tmp: str | Path | None = None) -> list[Path]:
    """Remove snapshot directories in `tmp` (the temporary directory) whose process is gone."""
    removed = []
    for entry in Path(tmp or tempfile.gettempdir()).glob(PREFIX + "*"):
        match = _OWN.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        logger.info("removed %d stale snapshot directories of stopped servers", len(removed))
    return removed


def verified_snapshot(found, base, max_rank: int | None = None, cache=None,
                      on_fetch: FetchObserver | None = None) -> Path:
    """Snapshot `found` (a StoredAdapter, or a RemoteAdapter fetched first through `cache`, an
    AdapterCache) under `snapshot_root()`; a SeLoRA snapshot is validated in full for the base
    model `base` (a config or its BaseFacts) in the same pass and marked verified. Raises
    AdapterError naming `found.name` and the reason (StoreUnavailable: 503), FileNotFoundError
    if a remote adapter vanished from its bucket since it was listed."""
    timings: dict[str, float] = {}
    facts = BaseFacts.of(base) if found.kind == "selora" else None
    if isinstance(found, RemoteAdapter):
        with cached_copy(found, cache) as (local, fetched):
            path = snapshot(local, snapshot_root(), base=facts, max_rank=max_rank, timings=timings)
        if fetched.nbytes and on_fetch is not None:
            on_fetch(found.name, fetched.nbytes, fetched.seconds)
    else:
        path = snapshot(found, snapshot_root(), base=facts, max_rank=max_rank, timings=timings)
    logger.info("snapshot of adapter %s in %.1f ms, verified in %.1f ms", found.name, 1e3 * timings.get("copy", 0.0),
                1e3 * timings.get("verify", 0.0))
    return path


def checkout(store: AdapterStore, name: str, base, max_rank: int | None = None,
             on_fetch: FetchObserver | None = None) -> Path | None:
    """The verified snapshot of the adapter `name`, or None if no root holds it (or it vanished
    from its bucket since it was listed). AdapterError (StoreUnavailable: 503) for the rest."""
    found = store.find(name)
    if found is None:
        return None
    try:
        return verified_snapshot(found, base, max_rank, store.cache if store.remote_roots else None, on_fetch)
    except FileNotFoundError:
        return None


__all__ = ["ENV_SNAPSHOTS", "checkout", "release_snapshot_root", "remove_stale", "snapshot_dir", "snapshot_root",
           "verified_snapshot"]
