"""`selora-convert` and `selora-train` SIGKILLed mid-write leave no OUT, only a hidden
`.OUT.tmp-*` that the next run removes. The real commands run in a child process whose `os.fsync`
kills the process the first time it syncs a file of OUT's temporary directory: every file of the
output has been written, none is committed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selora_serve.checkpoint import load_checkpoint

from .training.conftest import QA, write_jsonl

DIE_AT_FIRST_SYNC = textwrap.dedent("""
    import importlib, os, signal, sys
    target, module, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    mark = f"/.{os.path.basename(target)}.tmp-"
    real_fsync = os.fsync
    def fsync(fd):
        if mark in os.readlink(f"/proc/self/fd/{fd}"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fsync(fd)
    os.fsync = fsync
    sys.exit(importlib.import_module(module).main(argv))
""")
ROOT = Path(__file__).parents[1]


def _run(module: str, out: Path, args: list, *, killed: bool) -> subprocess.CompletedProcess:
    argv = [*map(str, args)]
    cmd = [sys.executable, "-c", DIE_AT_FIRST_SYNC, str(out), module, *argv] if killed else \
        [sys.executable, "-m", module, *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _check_killed_then_recovered(module, out, args, verify, rerun=()):
    proc = _run(module, out, args, killed=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()
    assert list(out.parent.glob(f".{out.name}.tmp-*")), "the kill should have caught the writer mid-write"
    proc = _run(module, out, [*args, *rerun], killed=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    verify(out)


@pytest.mark.parametrize("command", ["merge", "to-peft"])
def test_killed_selora_convert_leaves_no_output(checkpoints, tiny_model, tmp_path, command):
    out = tmp_path / "out"
    args = [command, checkpoints["haar"], out] + (["--base", tiny_model] if command == "merge" else [])
    _check_killed_then_recovered("converters.cli", out, args, lambda o: (o / "config.json" if command == "merge"
                                                                         else o / "adapter_config.json").is_file())


def test_killed_selora_train_leaves_no_output(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", QA)
    out = tmp_path / "trained"
    args = ["--model", tiny_model, "--data", data, "--out", out, "--rank", 4, "--alpha", 8, "--eta", 0.5,
            "--basis", "fourier", "--targets", "q_proj,v_proj", "--epochs", 1, "--batch-size", 3, "--quiet"]
    # The killed run's step checkpoints (OUT.train/, each written atomically) let the next resume.
    _check_killed_then_recovered("selora_serve.training.cli", out, args, load_checkpoint, rerun=["--resume"])
