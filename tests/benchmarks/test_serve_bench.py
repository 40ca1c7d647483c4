"""Smoke test of benchmarks/serve.py --quick: two real servers (plain vLLM, selora-serve) on CPU.

About 2 minutes on 2 cores (two server starts dominate). Checks the JSON contract, not speed:
the ratios on a loaded CI machine are noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve.py"


def test_quick_run_writes_the_json_contract(tmp_path):
    pytest.importorskip("vllm")
    pytest.importorskip("openai")
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--plot-dir", str(tmp_path / "plots"),
         "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = json.loads(out.read_text())
    assert last == doc
    assert doc["benchmark"] == "serve" and doc["config"]["quick"]
    (record,) = doc["records"]
    assert record["n_adapters"] == 2
    for key in ("throughput_ratio", "cold_ttft_ratio", "bytes_ratio", "host_memory_ratio"):
        assert isinstance(record[key], float) and record[key] > 0, key
    for system in ("dense", "selora"):
        figures = record[system]
        assert figures["cold_ttft_ms"] > 0 and figures["warm_ttft_ms"] > 0
        for pop in ("uniform", "zipf"):
            assert figures[pop]["requests"] == doc["config"]["requests"] * doc["config"]["rounds"]
            assert figures[pop]["output_tokens_per_s"] > 0
    # Every trace request and cold probe decoded once; nothing was evicted at this size.
    selora = record["selora"]
    assert selora["decodes"] == sum(selora["uniform"]["distinct_models"]) + doc["config"]["probes"]
    # The API process's share of those first loads, from selora-serve's own log lines.
    assert selora["snapshot_ms_p50"] > 0 and selora["verify_ms_p50"] > 0
    assert len(selora["probe_ttfts_ms"]["cold"]) == doc["config"]["probes"]
    # Same adapter, same dtype: the spectral checkpoint is well under half the dense file.
    assert record["bytes_ratio"] < 0.5
    # Dense host cache (the default): selora-serve caches exactly the dense tensors plain vLLM does.
    assert doc["config"]["host_cache_form"] == "dense"
    assert doc["memory"]["selora"]["cache_bytes_per_adapter"] == doc["adapter"]["dense_tensor_bytes"]
    assert record["cache_bytes_ratio"] == 1.0
    assert all(Path(p).is_file() for p in doc["plots"])


@pytest.mark.parametrize("flag", ["--rounds", "--requests"])
def test_serve_benchmark_refuses_zero_rounds_or_requests(flag, capsys):
    from benchmarks import serve

    with pytest.raises(SystemExit):
        serve.parse_args([flag, "0"])
    assert "--rounds and --requests must be at least 1" in capsys.readouterr().err


def test_real_preset_is_smollm2_at_rank_32(real_model, tmp_path):
    from benchmarks import serve

    args = serve.parse_args(["--model-size", "real"])
    assert (args.spec, args.rank) == (None, serve.REAL_RANK)
    # The preset's model is exported into the work directory once, then found there.
    (tmp_path / "smollm2").symlink_to(real_model, target_is_directory=True)
    assert serve.real_model(tmp_path) == tmp_path / "smollm2"


def test_serve_benchmark_refuses_a_model_dir_without_config(tmp_path, capsys):
    from benchmarks import serve

    with pytest.raises(SystemExit):
        serve.parse_args(["--model", str(tmp_path)])
    assert f"--model {tmp_path}: not a Hugging Face model directory (no config.json)" in capsys.readouterr().err


def test_real_preset_without_the_real_extra_says_how_to_install_it(tmp_path, monkeypatch):
    from benchmarks import serve
    from selora_serve import models

    missing = models.GGUFSource("smollm2", "no_such_package_selora", "model.gguf", "a model not installed")
    monkeypatch.setitem(models.MODELS, "smollm2", missing)
    with pytest.raises(SystemExit) as exc:
        serve.real_model(tmp_path)
    assert str(exc.value).startswith("the real-model preset: the smollm2 model comes from the PyPI package "
                                     "'no_such_package_selora', which is not installed")
    assert models.INSTALL_HINT in str(exc.value)
