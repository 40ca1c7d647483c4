"""What every benchmark script does last, and the tiny model its `--quick` run measures.

`publish` prints the human table, writes the JSON document atomically (`--json`), draws the
plot (`--plot`), and prints the document as the last line of stdout: the contract the suite's
smoke tests and anyone piping a benchmark into `jq` rely on.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from selora_serve.atomic import write_json


def publish(report: dict, *, table: Callable[[dict], None] | None = None, json_path: str | None = None,
            plot: Callable[[dict, str], object] | None = None, plot_path: str | None = None) -> None:
    """Print `table(report)`, write `report` to `json_path`, plot it to `plot_path` (each if
    given), then print `report` as one JSON line."""
    if table is not None:
        table(report)
    if json_path:
        write_json(json_path, report)
    if plot is not None and plot_path:
        plot(report, plot_path)
    print(json.dumps(report))


def quick_model_dir(prefix: str) -> str:
    """A fresh tiny random Llama in a temporary directory (the `--quick` runs' model)."""
    from selora_serve.tiny import build_tiny_model

    return str(build_tiny_model(tempfile.mkdtemp(prefix=f"{prefix}-") + "/tiny", seed=0))


def utc_now() -> str:
    """This moment as an ISO 8601 UTC timestamp (the form every results record uses)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provenance(script: str, argv: list[str] | None) -> dict:
    """Which run produced a results document: the command line, the project's commit (None outside
    a git checkout; "+dirty" when tracked code had changes) and when it finished (UTC)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # results files are what a run writes: changes there do not make the code dirty
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"):
        commit += "+dirty"
    args = sys.argv[1:] if argv is None else argv
    return {"command": shlex.join(["python", f"benchmarks/{script}", *args]), "git_commit": commit,
            "finished_utc": utc_now()}
