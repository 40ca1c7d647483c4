"""A scratch directory handed to child processes through an environment variable.

`env_scratch_dir(VAR, prefix)` runs its body with VAR naming a fresh directory and removes both
afterwards; if VAR is already set, the user's directory is used as is and left in place. The
server uses it for state its spawned processes share (Prometheus multiprocess files, adapter
snapshots), which must go when the server does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, MutableMapping


@contextlib.contextmanager
def env_scratch_dir(var: str, prefix: str, environ: MutableMapping[str, str] = os.environ) -> Iterator[str]:
    if environ.get(var):
        yield environ[var]
        return
    path = tempfile.mkdtemp(prefix=prefix)
    environ[var] = path
    try:
        yield path
    finally:
        environ.pop(var, None)
        shutil.rmtree(path, ignore_errors=True)
