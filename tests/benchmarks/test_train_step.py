"""benchmarks/train_step.py: its smoke run's table and records, the ratio arithmetic, bad options."""

from __future__ import annotations

import json

import pytest

from benchmarks import train_step as ts


def test_quick_run_times_every_method_against_lora(capsys, tmp_path):
    out = tmp_path / "train-step.json"
    assert ts.main(["--quick", "--per-factor", "--threads", "1", "--json", str(out),
                    "--methods", ",".join(ts.METHODS)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc == json.loads(printed.strip().splitlines()[-1]) and doc["complete"] and doc["quick"]
    methods = ["lora-r32", "selora-w-haar", "selora-w-db4", "selora-f", "selora-f-proj", "selora-w-haar/per-factor",
               "selora-w-db4/per-factor", "selora-f/per-factor"]  # projected steps banks: no per-factor form
    assert [(r["regime"], r["method"]) for r in doc["summary"]] == [(g, m) for g in ts.REGIMES for m in methods]
    # the projected optimiser is what "-proj" times; everything else plain AdamW
    assert {(s["method"], s["optimizer"]) for s in doc["samples"]} == {
        (m, "projected-adamw" if "-proj" in m else "adamw") for m in methods}
    for row in doc["summary"]:
        assert row["threads"] == 1 and row["s_per_step"] > 0 and row["rounds"] == 1
        assert row["vs_lora_r32"] == pytest.approx(row["s_per_step"] / next(
            r["s_per_step"] for r in doc["summary"] if r["regime"] == row["regime"] and r["method"] == "lora-r32"))
    assert all(len(s["step_seconds"]) == 2 for s in doc["samples"])  # 3 steps, the first dropped
    # the alpaca regime's sequences are the longer ones
    assert doc["tokens_per_sequence"]["alpaca"] > 3 * doc["tokens_per_sequence"]["short"]
    assert "vs LoRA r32" in printed and "selora-w-db4/per-factor" in printed


def test_default_methods_leave_out_the_projected_optimiser():
    assert ts.DEFAULT_METHODS == ("lora-r32", "selora-w-haar", "selora-w-db4", "selora-f")


def test_summary_ratios_use_the_same_round_and_regime():
    samples = [{"round": r, "threads": 1, "regime": "short", "method": m, "step_seconds": [s]}
               for r, (lora, haar) in enumerate([(1.0, 1.2), (2.0, 2.2)]) for m, s in (("lora-r32", lora), ("selora-w-haar", haar))]
    rows = {row["method"]: row for row in ts.summarise(samples)}
    assert rows["selora-w-haar"]["vs_lora_r32"] == pytest.approx(1.7 / 1.5)
    assert rows["selora-w-haar"]["vs_lora_r32_per_round_median"] == pytest.approx((1.2 + 1.1) / 2)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "two"], "--threads: expected integers"),
    (["--methods", "dora"], "unknown regime or method: dora"),
    (["--regimes", "long"], "unknown regime or method: long"),
    (["--steps", "1"], "--steps >= 2"),
])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        ts.main(argv)
    assert message in capsys.readouterr().err
