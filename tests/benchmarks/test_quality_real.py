"""Smoke test of benchmarks/quality_real.py on the real model: the sweep, the chosen learning rate,
the records the issue names, and the pure pieces (task split, matched rank, lr choice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import quality_real as q

pytestmark = pytest.mark.real

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality_real.py"
RECORD_KEYS = {"method", "seed", "lr", "trainable_params", "heldout_accuracy", "heldout_loss", "s_per_step",
               "peak_memory_mib", "validation_loss"}


def test_quick_run_writes_the_records(real_model, tmp_path):
    out = tmp_path / "quality-real.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--model-dir", str(real_model), "--json", str(out),
                           "--threads", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc == json.loads(proc.stdout.strip().splitlines()[-1]) and doc["complete"]
    assert [r["method"] for r in doc["runs"]] == list(q.QUICK.methods)
    for record in doc["runs"]:
        assert RECORD_KEYS <= set(record) and record["phase"] == "sweep" and record["steps"] == 6
        assert 0 <= record["heldout_accuracy"] <= 1 and record["heldout_loss"] > 0 and record["peak_memory_mib"] > 500
    params = {r["method"]: r["trainable_params"] for r in doc["runs"]}
    assert params == {"selora-w-haar": 2_654_280, "lora-r32": 6_635_520}  # SmolLM2, r 32 on q, k, v, up, down
    assert doc["base"]["heldout_accuracy"] == 0.0 and doc["chosen_lr"] == {"selora-w-haar": 6e-4, "lora-r32": 6e-4}
    assert "selora-w-haar" in proc.stdout and "test accuracy" in proc.stdout


def test_splits_are_disjoint_and_sized():
    sizes = q.Sizes(train=300, validation=50, test=60)
    split = q.addition_split(sizes)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [300, 50, 60]
    questions = [p for part in split.values() for p, _ in part]
    assert len(set(questions)) == len(questions)
    for question, answer in split["test"]:
        a, b = question.rstrip("=").split("+")
        assert 100 <= int(a) <= 999 and int(answer) == int(a) + int(b)


def test_matched_rank_and_chosen_lrs():
    shapes = [(576, 576), (576, 192), (576, 192), (576, 1536), (1536, 576)] * 30  # SmolLM2's targets
    assert q.matched_rank(q.Sizes(), shapes) == 13
    runs = [{"phase": "sweep", "method": "m", "lr": lr, "validation_loss": loss} for lr, loss in
            [(2e-4, 1.0), (6e-4, 0.5), (2e-3, 0.7)]] + [{"phase": "seed", "method": "m", "lr": 2e-3, "validation_loss": 0.1}]
    assert q.chosen_lrs(runs) == {"m": 6e-4}


def test_bad_options_are_refused(capsys):
    for argv, message in [(["--methods", "lora-r7"], "--methods: unknown lora-r7"),
                          (["--lrs", "fast"], "--lrs: expected numbers"), (["--seeds", "0"], "--seeds must be >= 1")]:
        with pytest.raises(SystemExit):
            q.main(argv)
        assert message in capsys.readouterr().err
