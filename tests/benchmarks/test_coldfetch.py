"""Smoke test of benchmarks/coldfetch.py: the LLaMA-shaped part (no engine) against moto, each
link setting this machine allows, every stage timed and the fetched bytes those of the objects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "coldfetch.py"


def test_quick_llama_part_times_every_stage(tmp_path):
    pytest.importorskip("moto.server")
    pytest.importorskip("obstore")
    out = tmp_path / "coldfetch.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--parts", "llama8b", "--probes", "1",
                           "--json", str(out), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc == json.loads(proc.stdout.strip().splitlines()[-1])
    settings = doc["link"]["settings_mbit"]
    assert "unthrottled" in settings and (doc["link"]["why_not"] is None) == ("100MB/s" in settings)
    sizes = doc["sizes"]["llama8b"]
    assert sizes["selora_bytes"] < 0.45 * sizes["dense_bytes"]
    for setting in settings:
        r = doc["results"]["llama8b"][setting]
        for kind in ("selora", "dense"):
            assert set(r["p50_ms"][kind]) == {"list", "fetch", "snapshot", "decode_or_load"}
            assert all(v > 0 for v in r["p50_ms"][kind].values()), r
            assert r["bytes"][kind] == sizes[f"{kind}_bytes"]
        assert r["selora_over_dense"] > 0


def test_coldfetch_refuses_unknown_settings(capsys):
    from benchmarks import coldfetch

    with pytest.raises(SystemExit):
        coldfetch.main(["--settings", "10GB/s"])
    assert "unknown part or setting: 10GB/s" in capsys.readouterr().err
