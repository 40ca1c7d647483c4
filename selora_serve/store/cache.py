"""A local cache of fetched adapters, bounded in bytes, shared by the processes of one server.

    cache = AdapterCache("/var/cache/selora/adapters", max_bytes=16 << 30)
    with cache.entry(key, fetch=lambda tmp: download_into(tmp)) as path:
        ...                                   # path: a directory holding the adapter's files
    cache.evict()                             # least recently used entries go until under budget

An entry is one version of one adapter: a directory named by `key` (the caller derives it from
the adapter's URL and its objects' ETags, so a replaced object is a new key and is fetched
again). It survives restarts and is never modified after it appears. Layout under the root:

    entries/KEY/         the adapter's files, plus .selora-cache.json (its bytes, url, ...)
    locks/KEY.lock       flock(2) target: exclusive while KEY is fetched or evicted, shared
                         while a reader copies it out
    refs/URLHASH         JSON {"url", "key"}: the last version of an adapter URL seen here, the
                         copy served when the store cannot be asked (`last_key`)
    .tmp-KEY-XXXX/       a fetch in progress; renamed to entries/KEY when complete

Guarantees: concurrent first requests for one key, in any threads or processes sharing the root,
fetch it once (the others wait on the key's lock, then find the entry); a download lands in a
temporary directory renamed into place only once complete, so a killed server never leaves a half
entry that a later start serves (stale temporaries are removed when their key's lock is free);
an entry being read is never evicted under its reader. LRU order is the modification time of the
entry's metadata file, touched on every use. An entry larger than the whole budget is served
once and evicted by the next `evict`. Pure file-system code: no vLLM, no network.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from ..atomic import atomic_file

META = ".selora-cache.json"
LOCK_POLL_S = 0.02


class CacheBusy(TimeoutError):
    """Waiting for another fetch of the same key took longer than the caller allowed."""


def _flock(path: Path, exclusive: bool, deadline: float | None) -> int | None:
    """A descriptor of `path` locked shared or exclusive, waiting until `deadline` (monotonic; None:
    do not wait). None if not acquired in time. The lock file may be unlinked by an evictor once it
    holds it: a lock taken on a file no longer at `path` is dropped and taken again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, op)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or deadline is None or time.monotonic() > deadline:
                    os.close(fd)
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        return None
                    raise
                time.sleep(LOCK_POLL_S)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # unlinked under us by an evictor: lock the file now at `path`


def _release(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases its flock


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name != META)


class AdapterCache:
    def __init__(self, root: str | Path, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"adapter cache size must be >= 0 bytes, got {max_bytes}")
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        for sub in ("entries", "locks", "refs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()

    # --- paths -------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad cache key {key!r}")
        return self.root / "entries" / key

    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def _ref_path(self, url: str) -> Path:
        return self.root / "refs" / hashlib.sha256(url.encode()).hexdigest()[:32]

    # --- reading and filling -----------------------------------------------------------------

    def has(self, key: str) -> bool:
        return (self.path(key) / META).is_file()

    @contextlib.contextmanager
    def entry(self, key: str, fetch: Callable[[Path], dict] | None = None, *,
              wait_s: float = 300.0) -> Iterator[Path]:
        """Yield the entry `key` held under a shared lock (not evicted while the body runs).

        If it is absent, `fetch(tmp_dir)` is called (once across every process sharing this root;
        others wait up to `wait_s` for it, then CacheBusy) to write the adapter's files into
        `tmp_dir`; it returns metadata kept in the entry's META file. Without `fetch`, an absent
        entry raises KeyError. Exceptions from `fetch` propagate and leave nothing behind.
        """
        deadline = time.monotonic() + wait_s
        while True:
            fd = _flock(self._lock_path(key), exclusive=False, deadline=deadline)
            if fd is None:
                raise CacheBusy(f"another process has been fetching {key} for over {wait_s:.0f} s")
            if self.has(key):
                try:
                    os.utime(self.path(key) / META)  # most recently used
                    yield self.path(key)
                finally:
                    _release(fd)
                return
            _release(fd)
            if fetch is None:
                raise KeyError(key)
            self._fill(key, fetch, deadline)  # then read it under a shared lock, as above

    def _fill(self, key: str, fetch: Callable[[Path], dict], deadline: float) -> None:
        fd = _flock(self._lock_path(key), exclusive=True, deadline=deadline)
        if fd is None:
            raise CacheBusy(f"another process has been fetching {key} for too long")
        try:
            if self.has(key):
                return  # fetched by someone else while we waited
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{key}-"))
            try:
                meta = dict(fetch(tmp) or {})
                meta.update(key=key, bytes=_dir_bytes(tmp), fetched=time.time())
                (tmp / META).write_text(json.dumps(meta))
                for f in tmp.iterdir():  # durable before visible: a crash never leaves a torn entry
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                shutil.rmtree(self.path(key), ignore_errors=True)  # a torn entry without META
                os.rename(tmp, self.path(key))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            _release(fd)

    # --- the last version seen of each URL ---------------------------------------------------

    def set_last_key(self, url: str, key: str, **extra) -> None:
        with atomic_file(self._ref_path(url), "w", durable=False) as fh:
            json.dump({"url": url, "key": key, **extra}, fh)

    def last(self, url: str) -> dict | None:
        """The record `set_last_key` wrote for `url`, if its entry is still cached."""
        try:
            ref = json.loads(self._ref_path(url).read_text())
        except (OSError, ValueError):
            return None
        return ref if isinstance(ref, dict) and ref.get("url") == url and self.has(str(ref.get("key"))) else None

    # --- size and eviction -------------------------------------------------------------------

    def entries(self) -> list[tuple[str, int, float]]:
        """(key, bytes, last used) of every complete entry, least recently used first."""
        out = []
        for path in (self.root / "entries").iterdir():
            try:
                meta_path = path / META
                used = meta_path.stat().st_mtime
                size = int(json.loads(meta_path.read_text())["bytes"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written or removed
            out.append((path.name, size, used))
        return sorted(out, key=lambda e: e[2])

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> list[str]:
        """Remove least recently used entries not being read until the total fits `max_bytes`;
        returns the keys removed."""
        gone: list[str] = []
        guard = _flock(self.root / ".evict.lock", exclusive=True, deadline=time.monotonic() + 30)
        if guard is None:
            return gone  # another process is evicting
        try:
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for key, size, _ in entries:
                if total <= self.max_bytes:
                    break
                fd = _flock(self._lock_path(key), exclusive=True, deadline=None)
                if fd is None:
                    continue  # being read or fetched: not now
                try:
                    trash = self.root / f".trash-{key}-{os.getpid()}"
                    os.rename(self.path(key), trash)
                    shutil.rmtree(trash, ignore_errors=True)
                    os.unlink(self._lock_path(key))
                except FileNotFoundError:
                    pass
                finally:
                    _release(fd)
                total -= size
                gone.append(key)
        finally:
            _release(guard)
        return gone

    def _remove_stale_temporaries(self) -> None:
        """Fetches and evictions a killed process left half done (their key's lock is free)."""
        for stale in self.root.glob(".t*-*"):
            if stale.name.startswith(".trash-"):
                shutil.rmtree(stale, ignore_errors=True)
                continue
            if not stale.name.startswith(".tmp-"):
                continue
            key = stale.name[len(".tmp-"):].rsplit("-", 1)[0]
            fd = _flock(self._lock_path(key), exclusive=True, deadline=None)
            if fd is not None:
                try:
                    shutil.rmtree(stale, ignore_errors=True)
                finally:
                    _release(fd)


def parse_size(text: str | int) -> int:
    """Bytes from "10G", "512MiB", "1.5T", "1000000" (K/M/G/T are powers of 1024)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in scale:
            value = float(s[:-1]) * scale[s[-1]]
        else:
            value = float(s)
    except ValueError:
        raise ValueError(f"{text!r}: expected a size in bytes such as 20G, 512M or 1000000") from None
    if value < 0:
        raise ValueError(f"{text!r}: a size must not be negative")
    return int(value)
