"""benchmarks/fleet.py without a cluster: its ratios, its log parsing and its refusals (the runs
themselves take minutes each and live in benchmarks/results/fleet.jsonl)."""

from __future__ import annotations

import pytest

from benchmarks import fleet


def _record(system, replicas, setting="100MB/s", **over):
    base = {"system": system, "replicas": replicas, "setting": setting, "bytes_fetched": 1000, "loads_total": 4,
            "cold_ttft_p50_ms": 200.0, "cold_ttft_p95_ms": 400.0, "warm_ttft_p50_ms": 50.0,
            "output_tokens_per_s": 100.0, "failed": 0, "replica_rss_bytes": [2 << 30]}
    return {**base, **over}


def test_table_reports_selora_over_dense_per_setting_and_replicas():
    records = [_record("dense", 1), _record("selora", 1, bytes_fetched=400, cold_ttft_p50_ms=150.0,
                                               output_tokens_per_s=99.0, replica_rss_bytes=[1 << 30]),
               _record("dense", 2, setting="unthrottled")]
    text, ratios = fleet.table(records)
    assert ratios == [{"setting": "100MB/s", "replicas": 1, "bytes_fetched": 0.4, "cold_ttft_p50_ms": 0.75,
                       "cold_ttft_p95_ms": 1.0, "warm_ttft_p50_ms": 1.0, "output_tokens_per_s": 0.99,
                       "replica_rss": 0.5}], "a system without its twin has no ratio"
    assert "100MB/s" in text and "unthrottled" in text and "2048" in text, "RSS in MB"


def test_loads_are_counted_per_replica_from_the_session_logs(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    line = "INFO serving.py:227] Loaded new LoRA adapter: name '{}', path '/x'\n"
    (logs / "worker-abc-01000000-111.out").write_text(line.format("smollm2:a1") + line.format("smollm2:a2"))
    (logs / "worker-abc-01000000-111.err").write_text(line.format("smollm2:a3"))
    (logs / "worker-def-01000000-222.out").write_text("nothing loaded\n")
    (logs / "raylet.out").write_text(line.format("not a replica"))
    assert fleet._loads_per_replica(tmp_path) == {"111": 3}


def test_unknown_settings_and_systems_are_refused(capsys):
    with pytest.raises(SystemExit):
        fleet.main(["--settings", "10GB/s"])
    assert "--settings 10GB/s: expected one of unthrottled, 100MB/s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fleet.main(["--systems", "lora"])
    assert "--systems lora: expected dense or selora" in capsys.readouterr().err
