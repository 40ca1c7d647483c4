"""Atomic writes: a reader sees the old output or the complete new one, never a part.

Files are written to a temporary name in the same directory, flushed to disk, then renamed
over the target (`os.replace`, atomic on POSIX). Directories are built as a hidden sibling
`.NAME.tmp-XXXX` and renamed into place; if the target exists it is replaced only when the
caller allows it. A process killed mid-write leaves at most a hidden `.NAME.tmp-*` sibling,
which the next write to the same target removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".tmp-"


def _umask_mode(base: int) -> int:
    """`base` (0o666 for files, 0o777 for directories) less the process umask, as open() does;
    mkstemp/mkdtemp create private 0o600/0o700 entries, which would surprise users."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, durable: bool = True) -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; on success rename it over `path`.

    `durable=False` skips the fsyncs: the rename is still atomic for readers, but the file may be
    lost in a crash (for files that do not outlive the process anyway)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        os.chmod(tmp, _umask_mode(0o666))
        with os.fdopen(fd, mode) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")


def _remove_stale_temporaries(target: Path) -> None:
    for stale in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it becomes `target`.

    Raises FileExistsError up front if `target` exists and `overwrite` is false, so no work is
    wasted. With `overwrite`, the old directory is swapped out and removed after the rename.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{TMP_MARK}"))
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                os.chmod(child, _umask_mode(0o666))
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{TMP_MARK}old-"))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
