"""Drop files from the OS page cache, so that the next read comes from the disk.

A benchmark that writes adapters and then serves them would otherwise measure "cold" loads
from memory. `evict` writes back any dirty pages of each file (fsync), then asks the kernel to
drop them (posix_fadvise POSIX_FADV_DONTNEED): no privileges needed, other files untouched.
Where posix_fadvise does not exist (macOS, Windows) it evicts nothing and says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

SUPPORTED = hasattr(os, "posix_fadvise")


def evict(paths: Iterable[str | Path]) -> int:
    """Drop every regular file in `paths` (files, or directories scanned one level deep) from
    the page cache; returns the number of bytes asked to leave (0 where unsupported)."""
    if not SUPPORTED:
        return 0
    total = 0
    for path in map(Path, paths):
        files = [f for f in path.iterdir() if f.is_file()] if path.is_dir() else [path]
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total
