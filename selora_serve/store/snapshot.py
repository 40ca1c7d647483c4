"""Snapshots: the private copy of an adapter that the engine loads, verified in the same pass.

    path = snapshot(found, root, base=facts)  # -> Path; raises AdapterError naming the reason
    is_verified(path, facts.fingerprint)      # the worker's test: skip the value-level checks

`snapshot` copies an adapter's files into a private directory, reading them
through one open descriptor of the adapter's directory: a directory swapped by rename mid-copy (as
every atomic write here does) yields the old files or the new ones, never some of each (an adapter
cache entry, never changed once it exists, is hard-linked instead). With `base`, a SeLoRA adapter
is validated in full (`validate_bytes`: manifest, fit to the base, every tensor, every value
finite, every Omega checksum) on the very bytes that copy read, in memory, before anything is
written; the copy then appears (renamed into place) already marked verified for that base. So what
was validated is what vLLM loads, the source is read once, and an adapter deleted or replaced in
the store later changes nothing until it is unloaded and requested again. The engine's worker,
which decodes the snapshot inside the engine loop (every tenant waits), skips the checks that read
every value for a snapshot so marked (`is_verified`).

A local SeLoRA checkpoint's files are not copied but hard-linked: the very inodes that were read
(through /proc/self/fd, else by name and checked to be the inode read: a file renamed over the
name meanwhile is not the one linked)
when their size and mtime did not change during the read, and the identity of each linked file
(inode, size, mtime, ctime, after linking) is recorded beside the verified mark. Atomic writers
(a new file renamed into place, every writer here) leave a linked snapshot's bytes untouched; a
file rewritten in place changes its mtime and ctime (even one whose mtime is then set back),
which the worker's re-check after its own read (`intact`) catches: it then validates what it
read in full instead of trusting the mark. (Replacing or deleting the store's file also moves the
linked inode's ctime, as its link count drops: the worker then validates once more than needed.) Where a
link cannot be made (another file system, no /proc) or the file changed while it was read, the
snapshot is a private copy as before. Saves writing the adapter's bytes into fresh pages on every
cold load (~30 ms for a SmolLM2 r = 32 adapter).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from ..atomic import atomic_file
from ..checkpoint import COEF_FILE, CONFIG_FILE
from .base import MAX_SNAPSHOT_BYTES, AdapterError, StoredAdapter
from .verify import validate_bytes


def snapshot(found: StoredAdapter, root: str | Path, *, base=None, max_rank: int | None = None,
             timings: dict[str, float] | None = None) -> Path:
    """Copy `found`'s files (a SeLoRA checkpoint's two, every regular file of a PEFT one) into a
    directory under `root` named by its name and content, consistently (see the module docstring).

    With `base` (the served model's config or BaseFacts) a SeLoRA adapter is validated in full
    for it (`validate_bytes`) on the bytes as they were read, in the same pass as the copy, and
    marked verified before the snapshot becomes visible: one read of the source, no re-read.
    Snapshots are content-addressed and never changed: loading the same bytes again reuses one
    (and skips its validation once verified for `base`), so a server keeps one copy per adapter
    version it served. AdapterError if it cannot be read or does not validate. `timings`, if
    given, receives the seconds spent reading and writing ("copy") and validating ("verify").
    """
    from ..base_model import BaseFacts

    t0 = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if found.version is not None:
        return _linked_snapshot(found, root, base, max_rank, timings)
    try:
        dir_fd = os.open(found.path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise AdapterError(found.name, f"cannot open its directory ({exc.strerror})") from None
    digest = hashlib.sha256()
    held: dict[str, bytes] = {}  # a SeLoRA adapter's files, validated from memory
    opened: dict[str, tuple] = {}  # ... and their open files with (inode, size, mtime) when read
    tmp: Path | None = None
    verify_s = 0.0
    try:
        names = (CONFIG_FILE, COEF_FILE) if found.kind == "selora" else _peft_files(os.listdir(dir_fd))
        total = 0
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue  # missing: validation names the file; a link or unreadable entry is no part of it
            src = os.fdopen(fd, "rb")
            keep = False
            try:
                before = os.fstat(src.fileno())
                if not stat.S_ISREG(before.st_mode):
                    continue
                digest.update(name.encode() + b"\0")
                if found.kind == "selora":
                    size = before.st_size
                    if total + size > MAX_SNAPSHOT_BYTES:
                        raise AdapterError(found.name, f"adapter directory larger than {MAX_SNAPSHOT_BYTES} bytes")
                    data = src.read(size + 1)  # + 1: a file still growing is read to its end below
                    while len(data) > size and (more := src.read(1 << 20)):
                        data += more
                        if total + len(data) > MAX_SNAPSHOT_BYTES:
                            break
                    total += len(data)
                    if total > MAX_SNAPSHOT_BYTES:
                        raise AdapterError(found.name, f"adapter directory larger than {MAX_SNAPSHOT_BYTES} bytes")
                    digest.update(data)
                    held[name] = data
                    opened[name] = (src, _identity(before))
                    keep = True
                    continue
                if tmp is None:
                    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
                with open(tmp / name, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_SNAPSHOT_BYTES:
                            raise AdapterError(found.name, f"adapter directory larger than {MAX_SNAPSHOT_BYTES} bytes")
                        digest.update(chunk)
                        dst.write(chunk)
            finally:
                if not keep:
                    src.close()
        # any name (vLLM's lora_name is free text) becomes one safe, bounded path component
        final = root / f"{quote(found.name, safe='')[:100]}-{digest.hexdigest()[:16]}"
        fingerprint = None
        if base is not None and found.kind == "selora":
            fingerprint = BaseFacts.of(base).fingerprint
            if final.is_dir() and is_verified(final, fingerprint):
                return final  # these very bytes were verified for this base before
            v0 = time.perf_counter()
            validate_bytes(found.name, found.path, held.get(CONFIG_FILE), held.get(COEF_FILE), base,
                           max_rank=max_rank)
            verify_s = time.perf_counter() - v0
        if tmp is None:
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
        linked = {}
        for name, data in held.items():
            src, read_as = opened[name]
            identity = _link_read_file(src, read_as, tmp / name, name, dir_fd)
            if identity is None:
                (tmp / name).write_bytes(data)
            else:
                linked[name] = identity
        if linked:
            (tmp / LINKED_MARK).write_text(json.dumps(linked))
        _publish(tmp, final, fingerprint)
        tmp = None
        return final
    finally:
        os.close(dir_fd)
        for src, _ in opened.values():
            src.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if timings is not None:
            timings["verify"] = verify_s
            timings["copy"] = time.perf_counter() - t0 - verify_s


def _publish(tmp: Path, final: Path, fingerprint: str | None) -> None:
    """Rename the finished snapshot `tmp` to `final`, marked verified for `fingerprint` (if
    given); if `final` exists already (the same bytes, snapshotted before), keep it instead."""
    if fingerprint is not None:
        (tmp / VERIFIED_MARK).write_text(fingerprint)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        if fingerprint is not None:
            mark_verified(final, fingerprint)


LINKED_MARK = ".selora-linked"  # in a snapshot: {file: [inode, size, mtime_ns, ctime_ns]} of its linked files


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _link_read_file(src, read_as: tuple[int, int, int], dst: Path, name: str, dir_fd: int) -> list[int] | None:
    """Hard-link the open file `src` (entry `name` of the directory `dir_fd`) at `dst`: the inode
    read, whatever its name points to now. Its identity after linking, or None (nothing linked)
    if it changed since it was read as `read_as` or cannot be linked (another file system)."""
    try:  # the open inode itself (some kernels refuse this: EXDEV)
        os.link(f"/proc/self/fd/{src.fileno()}", dst, follow_symlinks=True)
    except OSError:
        try:  # by name; then it must still be the inode we read
            os.link(name, dst, src_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
    after = os.fstat(src.fileno())
    if _identity(after) != read_as or os.stat(dst).st_ino != after.st_ino:
        dst.unlink()  # written while we read it, or renamed over since: the copy holds what was read
        return None
    return [after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns]


def intact(path: str | Path) -> bool:
    """True unless a file of the snapshot at `path` is a hard link (see the module docstring)
    whose inode, size, mtime or ctime differ from when it was linked: the worker calls it after
    reading the files, and validates what it read in full when it is False."""
    try:
        recorded = json.loads((Path(path) / LINKED_MARK).read_text())
    except FileNotFoundError:
        return True  # a private copy
    except (OSError, ValueError):
        return False
    for name, identity in recorded.items():
        try:
            st = os.stat(Path(path) / name)
        except OSError:
            return False
        if [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns] != identity:
            return False
    return True


def _peft_files(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))  # hidden: a cache's metadata, partial writes


def _linked_snapshot(found: StoredAdapter, root: Path, base, max_rank: int | None,
                     timings: dict[str, float] | None) -> Path:
    """`snapshot` of an immutable directory (`found.version` set): its files hard-linked (copied
    across file systems) into a directory named by the version, a SeLoRA adapter validated first
    on the bytes it holds. Linked files outlive the source's removal (a cache eviction)."""
    from ..base_model import BaseFacts

    t0 = time.perf_counter()
    final = root / f"{quote(found.name, safe='')[:100]}-{found.version[:16]}"
    fingerprint = BaseFacts.of(base).fingerprint if base is not None and found.kind == "selora" else None
    verify_s = 0.0
    tmp: Path | None = None
    try:
        if final.is_dir() and (fingerprint is None or is_verified(final, fingerprint)):
            return final
        names = (CONFIG_FILE, COEF_FILE) if found.kind == "selora" else _peft_files(os.listdir(found.path))
        present = [n for n in names if (found.path / n).is_file()]
        if fingerprint is not None:
            held = {n: (found.path / n).read_bytes() for n in present}
            v0 = time.perf_counter()
            validate_bytes(found.name, found.path, held.get(CONFIG_FILE), held.get(COEF_FILE), base, max_rank=max_rank)
            verify_s = time.perf_counter() - v0
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
        for name in present:
            try:
                os.link(found.path / name, tmp / name)
            except OSError:
                shutil.copyfile(found.path / name, tmp / name)
        _publish(tmp, final, fingerprint)
        tmp = None
        return final
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if timings is not None:
            timings["verify"] = verify_s
            timings["copy"] = time.perf_counter() - t0 - verify_s


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
