"""Adapter store roots in object storage: `s3://BUCKET/PREFIX`, read through obstore.

    root = S3Root("s3://adapters/prod")
    found = root.find("support-bot")         # -> RemoteAdapter | None (one LIST request)
    root.fetch(found, tmp_dir)               # GET each object into tmp_dir, ETag-checked
    root.adapters()                          # every adapter under the prefix (one paginated LIST)

Layout in the bucket mirrors a local store: PREFIX/NAME/ holding selora_config.json (+
selora_coefficients.safetensors) is a SeLoRA adapter, PREFIX/NAME/ holding adapter_config.json a
dense PEFT LoRA; NAME is one path part, or two ("team/NAME") like the local store's one nesting
level. Names are checked by `base.check_name` before any request is made.

Configuration is the standard AWS environment, read by obstore (object_store): AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for
S3-compatible servers (MinIO, Ceph). Plain http is allowed to a loopback endpoint, and elsewhere
only with AWS_ALLOW_HTTP=true. SELORA_ADAPTER_FETCH_TIMEOUT (seconds, default 30) bounds the
connect phase, any stall of a transfer, and the whole of one fetch's retries.

Consistency. A fetch GETs every object with If-Match on the ETag its LIST returned, so an object
replaced mid-fetch fails (PreconditionError) and the caller lists again (`ObjectChanged`); the
ETags of one LIST form the adapter's version (`RemoteAdapter.key`). Publish an adapter by writing
its coefficients first and its config (the file that makes a prefix an adapter) last: S3 LIST is
strongly consistent, so a reader that sees the new config sees the new coefficients too.

Errors: a store that cannot be reached, times out, refuses the credentials or answers 5xx raises
`StoreUnavailable` (an AdapterError with status 503, and a message naming the store, not the
endpoint's details); a missing object is "not found" (None), never an error. No vLLM import.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Literal
from urllib.parse import urlparse

from ..checkpoint import COEF_FILE, CONFIG_FILE
from ..peft_io import PEFT_CONFIG
from .base import MAX_SNAPSHOT_BYTES, AdapterError, StoredAdapter, StoreUnavailable, check_name

logger = logging.getLogger("vllm.selora_serve")

SCHEMES = ("s3",)
ENV_FETCH_TIMEOUT = "SELORA_ADAPTER_FETCH_TIMEOUT"
DEFAULT_FETCH_TIMEOUT_S = 30.0
LIST_TTL_S = 5.0  # listings (/v1/models, the admin API) are reused this long
CHUNK = 4 << 20
PERMANENT = ("no such bucket", "access denied", "credentials refused")  # misconfiguration, not an outage
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class ObjectChanged(Exception):
    """An object was replaced between the LIST and its GET: list again."""


def is_remote(root: str | Path) -> bool:
    return isinstance(root, str) and any(root.startswith(f"{s}://") for s in SCHEMES)


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name inside the adapter's prefix
    etag: str
    size: int


@dataclass(frozen=True)
class RemoteAdapter:
    """An adapter in a bucket, as one LIST saw it; or, with `cached_key`, the version last seen
    there and still in the local cache, served while the store cannot be asked (`files` empty)."""

    name: str
    root: "S3Root"
    kind: Literal["selora", "peft"]
    files: tuple[RemoteFile, ...]
    cached_key: str | None = None

    @property
    def url(self) -> str:
        return f"{self.root.url}/{self.name}"

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def key(self) -> str:
        """The cache key of this version: its URL and every object's name, ETag and size."""
        if self.cached_key is not None:
            return self.cached_key
        spec = [self.url, self.kind, sorted((f.name, f.etag, f.size) for f in self.files)]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:32]


def _kind(files: dict[str, RemoteFile]) -> Literal["selora", "peft"] | None:
    if CONFIG_FILE in files:
        return "selora"
    if PEFT_CONFIG in files:
        return "peft"
    return None


def _short(exc: BaseException) -> str:
    """A one-line reason from an obstore error, without URLs or credentials."""
    text = str(exc)
    for needle, reason in (("timed out", "timed out"), ("operation timed out", "timed out"),
                           ("error sending request", "connection failed"), ("NoSuchBucket", "no such bucket"),
                           ("AccessDenied", "access denied"), ("InvalidAccessKeyId", "credentials refused"),
                           ("SignatureDoesNotMatch", "credentials refused"), ("503", "store answered 503"),
                           ("500 Internal", "store answered 500"), ("error decoding response body", "transfer failed")):
        if needle in text:
            return reason
    return type(exc).__name__


def fetch_timeout() -> float:
    raw = os.environ.get(ENV_FETCH_TIMEOUT)
    if not raw:
        return DEFAULT_FETCH_TIMEOUT_S
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{ENV_FETCH_TIMEOUT}={raw!r}: expected a positive number of seconds")
    return value


def allow_http(endpoint: str | None, environ=os.environ) -> bool:
    """Plain http is allowed to a loopback endpoint, elsewhere only with AWS_ALLOW_HTTP=true."""
    if not endpoint or not endpoint.startswith("http://"):
        return False
    if environ.get("AWS_ALLOW_HTTP", "").lower() == "true":
        return True
    host = urlparse(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class S3Root:
    """One `s3://BUCKET/PREFIX` store root. Cheap to construct (no request is made)."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES or not parsed.netloc:
            raise ValueError(f"{url!r}: expected s3://BUCKET/PREFIX")
        if not _BUCKET.match(parsed.netloc):
            raise ValueError(f"{url!r}: {parsed.netloc!r} is not a valid S3 bucket name")
        prefix = parsed.path.strip("/")
        if prefix:
            check_name(prefix)  # no "..", empty parts or backslashes in the prefix either
        self.bucket, self.prefix = parsed.netloc, prefix
        self.url = f"s3://{self.bucket}/{self.prefix}" if prefix else f"s3://{self.bucket}"
        self._store = None
        self._listing: tuple[float, dict[str, RemoteAdapter]] | None = None
        self._list_failed = -float("inf")  # monotonic time of the last failed listing
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Root({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Root) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def client(self):
        if self._store is None:
            try:
                from obstore.store import S3Store
            except ImportError:
                raise ValueError(f"{self.url}: serving adapters from S3 needs obstore: "
                                 "pip install 'selora-serve[s3]'") from None
            timeout = fetch_timeout()
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint and endpoint.startswith("http://") and not allow_http(endpoint):
                raise ValueError(f"{self.url}: AWS_ENDPOINT_URL {endpoint} is plain http to a non-loopback host; "
                                 "set AWS_ALLOW_HTTP=true to allow it")
            options = {"connect_timeout": timedelta(seconds=min(timeout, 10.0)),
                       "read_timeout": timedelta(seconds=timeout), "allow_http": allow_http(endpoint)}
            retry = {"max_retries": 3, "retry_timeout": timedelta(seconds=timeout),
                     "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)}}
            config = {"endpoint": endpoint} if endpoint else {}
            self._store = S3Store(self.bucket, config=config, client_options=options, retry_config=retry)
        return self._store

    def _call(self, name: str, what: str, fn):
        """Run one obstore call; map its failures to StoreUnavailable (FileNotFoundError passes)."""
        from obstore.exceptions import BaseError, PreconditionError

        start = time.monotonic()
        try:
            return fn()
        except FileNotFoundError:
            raise
        except PreconditionError:
            raise ObjectChanged(name) from None
        except (BaseError, OSError) as exc:
            logger.warning("adapter store %s: %s failed: %s", self.url, what, str(exc).splitlines()[0][:300])
            cause = _short(exc)
            if time.monotonic() - start >= 0.9 * fetch_timeout():
                cause = f"timed out after {fetch_timeout():g} s"
            raise StoreUnavailable(name, f"the adapter store {self.url} is unavailable ({what}: {cause}); "
                                   "try again later", cause) from None

    def check(self) -> str | None:
        """Ask the store once (a LIST of the prefix), as `selora-serve` does before it starts vLLM.

        None if it answers; the reason if it cannot be reached now (connection, timeout, 5xx: the
        server starts anyway, serving local and cached adapters and retrying per request); a
        ValueError naming what to check if it is misconfigured (no such bucket, access denied,
        credentials refused), which no retry can fix."""
        import obstore

        try:
            self._call("(store)", "list", lambda: obstore.list_with_delimiter(self.client(), self._key() or None))
        except StoreUnavailable as exc:
            reason = exc.cause
            if reason not in PERMANENT:
                return reason
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            raise ValueError(
                f"--adapters {self.url}: {reason}; check the bucket name, the endpoint "
                f"({'AWS_ENDPOINT_URL=' + endpoint if endpoint else 'AWS S3: AWS_ENDPOINT_URL unset'}), AWS_REGION "
                "and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            ) from None
        return None

    def find(self, name: str) -> RemoteAdapter | None:
        """The adapter `name` as it is in the bucket now (one LIST), or None."""
        import obstore

        parts = check_name(name)
        if len(parts) > 2:
            return None
        listed = self._call(name, "list",
                            lambda: obstore.list_with_delimiter(self.client(), self._key(*parts) + "/"))
        files = {}
        for obj in listed["objects"]:
            file = obj["path"].rsplit("/", 1)[-1]
            files[file] = RemoteFile(file, obj.get("e_tag") or "", int(obj["size"]))
        kind = _kind(files)
        if kind is None:
            return None
        if kind == "selora":
            files = {k: v for k, v in files.items() if k in (CONFIG_FILE, COEF_FILE)}
        if sum(f.size for f in files.values()) > MAX_SNAPSHOT_BYTES:
            raise AdapterError(name, f"adapter larger than {MAX_SNAPSHOT_BYTES} bytes")
        return RemoteAdapter(name, self, kind, tuple(sorted(files.values(), key=lambda f: f.name)))

    def adapters(self, *, max_age: float = LIST_TTL_S) -> dict[str, RemoteAdapter]:
        """Every adapter under the prefix (top level and one nesting level), by name. Reuses a
        listing younger than `max_age` s; raises StoreUnavailable if the bucket cannot be listed
        (at once, without asking again, within `max_age` s of a failed listing)."""
        import obstore

        with self._lock:
            if self._listing is not None and time.monotonic() - self._listing[0] < max_age:
                return dict(self._listing[1])
            if time.monotonic() - self._list_failed < max_age:  # down a moment ago: do not wait on it again
                raise StoreUnavailable("(store)", f"the adapter store {self.url} is unavailable; try again later")
        base = self._key()
        try:
            objects = self._call("(store)", "list", lambda: obstore.list(
                self.client(), base + "/" if base else None, chunk_size=1000).collect())
        except StoreUnavailable:
            with self._lock:
                self._list_failed = time.monotonic()
            raise
        dirs: dict[str, dict[str, RemoteFile]] = {}
        for obj in objects:
            rel = obj["path"][len(base) + 1:] if base else obj["path"]
            parts = rel.split("/")
            if len(parts) not in (2, 3) or any(p.startswith(".") or not p for p in parts):
                continue
            dirs.setdefault("/".join(parts[:-1]), {})[parts[-1]] = RemoteFile(
                parts[-1], obj.get("e_tag") or "", int(obj["size"]))
        found = {}
        for name, files in sorted(dirs.items()):
            kind = _kind(files)
            if kind is None or ("/" in name and _kind(dirs.get(name.split("/")[0], {})) is not None):
                continue  # not an adapter, or inside one (as the local store: adapters do not nest)
            if kind == "selora":
                files = {k: v for k, v in files.items() if k in (CONFIG_FILE, COEF_FILE)}
            found[name] = RemoteAdapter(name, self, kind, tuple(sorted(files.values(), key=lambda f: f.name)))
        with self._lock:
            self._listing = (time.monotonic(), found)
        return dict(found)

    def last_listing(self) -> dict[str, RemoteAdapter]:
        """The last successful `adapters()` listing, however old ({} if none)."""
        with self._lock:
            return dict(self._listing[1]) if self._listing else {}

    def read(self, adapter: RemoteAdapter, file: str) -> bytes:
        """One small object of `adapter` (a manifest), whole."""
        import obstore

        return bytes(self._call(adapter.name, "get",
                                lambda: obstore.get(self.client(), self._key(adapter.name, file)).bytes()))

    def fetch(self, adapter: RemoteAdapter, dest: Path) -> int:
        """Write every object of `adapter` into the directory `dest`; returns the bytes fetched.

        FileNotFoundError if one vanished since the LIST, ObjectChanged if one was replaced, and
        StoreUnavailable if the store fails, stalls past the fetch timeout or sends a short body."""
        import obstore

        store, total = self.client(), 0
        deadline = time.monotonic() + max(fetch_timeout(), 1.0) + adapter.nbytes / 10e6  # >= 10 MB/s
        for f in adapter.files:
            key = self._key(adapter.name, f.name)
            options = {"if_match": f.etag} if f.etag else {}
            result = self._call(adapter.name, "get", lambda: obstore.get(store, key, options=options))
            got = 0
            with open(dest / f.name, "wb") as out:
                stream = result.stream(min_chunk_size=CHUNK)
                while True:
                    chunk = self._call(adapter.name, "get", lambda: next(stream, None))
                    if chunk is None:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(adapter.name, f"the adapter store {self.url} is too slow (fetch "
                                               "timed out); try again later")
            if got != f.size:
                raise StoreUnavailable(adapter.name, f"the adapter store {self.url} sent {got} of {f.size} bytes of "
                                       f"{f.name}; try again later")
            total += got
        return total


@dataclass
class Fetched:
    """What `cached_copy` did: bytes and seconds of the fetch (0 on a cache hit)."""

    nbytes: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def cached_copy(found: RemoteAdapter, cache) -> Iterator[tuple[StoredAdapter, Fetched]]:
    """Yield `found` as a local StoredAdapter: its entry in `cache` (an AdapterCache), fetched
    first if absent, and held against eviction while the body runs (the caller snapshots it).

    An object replaced between the LIST and its GET makes it list again once; one deleted since
    raises FileNotFoundError (the caller answers "not found"). The cache then records this
    version as the URL's last (`cache.last`), and evicts down to its budget on the way out."""
    info = Fetched()

    def fetch(tmp: Path) -> dict:
        start = time.perf_counter()
        info.nbytes = found.root.fetch(found, tmp)
        info.seconds = time.perf_counter() - start
        logger.info("fetched adapter %s from %s: %d bytes in %.1f ms", found.name, found.root.url, info.nbytes,
                    1e3 * info.seconds)
        return {"url": found.url, "kind": found.kind, "files": {f.name: f.etag for f in found.files}}

    for attempt in range(2):
        try:
            with cache.entry(found.key, None if found.cached_key else fetch) as path:
                cache.set_last_key(found.url, found.key, kind=found.kind)
                yield StoredAdapter(found.name, path, cache.root, found.kind, version=found.key), info
            break
        except ObjectChanged:
            again = found.root.find(found.name)
            if again is None:
                raise FileNotFoundError(found.url) from None
            if attempt:
                raise StoreUnavailable(found.name, f"the objects of {found.url} are being replaced; "
                                       "try again") from None
            found = again
        except KeyError:  # a stale copy evicted since `find`
            raise StoreUnavailable(found.name, f"the adapter store {found.root.url} is unavailable and "
                                   "its cached copy is gone; try again later") from None
    cache.evict()


__all__ = ["ENV_FETCH_TIMEOUT", "Fetched", "ObjectChanged", "RemoteAdapter", "RemoteFile", "S3Root", "StoreUnavailable",
           "allow_http", "cached_copy", "fetch_timeout", "is_remote"]
