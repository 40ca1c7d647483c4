"""Smoke test of benchmarks/coldload.py: every stage is timed and the JSON holds them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.coldload import STAGES

pytestmark = pytest.mark.vllm

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "coldload.py"


def test_tiny_run_times_every_stage(tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "coldload.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model-size", "tiny", "--adapters", "2", "--json", str(out),
                           "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc == json.loads(proc.stdout.strip().splitlines()[-1])
    for system, stages in STAGES.items():
        assert set(doc["p50_ms"][system]) == set(stages)
        assert all(v > 0 for v in doc["p50_ms"][system].values()), doc["p50_ms"]
        assert doc["total_ms"][system] == pytest.approx(sum(doc["p50_ms"][system].values()), abs=0.01)
    assert doc["selora_over_dense"] > 0


def test_coldload_refuses_zero_adapters(capsys):
    from benchmarks import coldload

    with pytest.raises(SystemExit):
        coldload.main(["--adapters", "0"])
    assert "--adapters must be at least 1" in capsys.readouterr().err
