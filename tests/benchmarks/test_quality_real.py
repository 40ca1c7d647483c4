"""Smoke test of benchmarks/quality_real.py on the real model: the sweep, the chosen learning rates,
the records the issue names, resuming; and the pure pieces (task splits, matched rank, budget
points, lr choice and the ladder, confidence intervals, paired comparisons)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import quality_real as q
from benchmarks import quality_stats as stats
from benchmarks import quality_tasks as tasks

pytestmark = pytest.mark.real

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality_real.py"
RECORD_KEYS = {"method", "seed", "lr", "trainable_params", "heldout_accuracy", "heldout_loss", "s_per_step",
               "peak_memory_mib", "validation_loss"}


def test_quick_run_writes_the_records_and_resumes(real_model, tmp_path):
    out = tmp_path / "quality-real.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    argv = [sys.executable, str(SCRIPT), "--quick", "--model-dir", str(real_model), "--json", str(out), "--threads", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc == json.loads(proc.stdout.strip().splitlines()[-1]) and doc["complete"]
    assert [(r["task"], r["method"]) for r in doc["runs"]] == [(t, m) for t in tasks.TASKS for m in q.QUICK.methods]
    for record in doc["runs"]:
        assert RECORD_KEYS <= set(record) and record["phase"] == "sweep" and record["steps"] == 6
        assert 0 <= record["heldout_accuracy"] <= 1 and record["heldout_loss"] > 0 and record["peak_memory_mib"] > 500
        assert record["update_rms"] > 0 and record["update_peak_over_rms"] > 1
    params = {r["method"]: r["trainable_params"] for r in doc["runs"]}
    assert params == {"selora-w-haar": 2_654_280, "lora-r32": 6_635_520}  # SmolLM2, r 32 on q, k, v, up, down
    assert doc["base"] == {t: {"heldout_accuracy": 0.0, "heldout_loss": pytest.approx(doc["base"][t]["heldout_loss"])}
                           for t in tasks.TASKS}
    assert doc["chosen_lr"] == {t: {"selora-w-haar": 6e-4, "lora-r32": 6e-4} for t in tasks.TASKS}
    assert "selora-w-haar" in proc.stdout and "test accuracy" in proc.stdout and "extraction" in proc.stdout
    # every run was appended to the results file; a rerun reuses them all and trains nothing
    results = out.with_suffix(".jsonl")
    assert len(results.read_text().splitlines()) == 4
    again = subprocess.run(argv + ["--progress"], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "seed 0 lr" not in again.stderr  # no run line: nothing was trained
    assert len(results.read_text().splitlines()) == 4
    assert json.loads(out.read_text())["runs"] == doc["runs"]
    assert doc["provenance"]["command"].startswith("python benchmarks/quality_real.py --quick")
    # the stored document re-shown without training: the table the (second) run printed
    png = tmp_path / "quality.png"
    shown = subprocess.run([sys.executable, str(SCRIPT.with_name("quality_report.py")), str(out), "--plot", str(png)],
                           capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0 and shown.stdout.strip() in again.stdout, shown.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_what_is_not_a_results_document(tmp_path, capsys):
    from benchmarks import quality_report

    bad = tmp_path / "r.json"
    bad.write_text('{"benchmark": "train-step"}')
    with pytest.raises(SystemExit):
        quality_report.main([str(bad)])
    assert f"{bad}: not a quality_real.py results document (KeyError: 'hardware')" in capsys.readouterr().err


def test_splits_are_disjoint_and_sized():
    split = tasks.addition_split(300, 50, 60)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [300, 50, 60]
    questions = [p for part in split.values() for p, _ in part]
    assert len(set(questions)) == len(questions)
    for question, answer in split["test"]:
        a, b = question.rstrip("=").split("+")
        assert 100 <= int(a) <= 999 and int(answer) == int(a) + int(b)


def test_extraction_holds_out_names_and_cities():
    split = tasks.extraction_split(200, 40, 40)
    seen = {part: {(json.loads(a)["name"], json.loads(a)["city"]) for _, a in rows} for part, rows in split.items()}
    train_names = {n for n, _ in seen["train"]}
    train_cities = {c for _, c in seen["train"]}
    for part in ("validation", "test"):
        assert not {n for n, _ in seen[part]} & train_names and not {c for _, c in seen[part]} & train_cities
    assert not {n for n, _ in seen["validation"]} & {n for n, _ in seen["test"]}
    for prompt, answer in split["test"]:
        record = json.loads(answer)
        assert prompt.endswith("\nJSON:") and answer.startswith(" {")
        assert record["name"] in prompt and record["city"] in prompt and str(record["age"]) in prompt
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        tasks.split("poetry", 1, 1, 1)


def test_matched_rank_budget_points_and_chosen_lrs():
    shapes = [(576, 576), (576, 192), (576, 192), (576, 1536), (1536, 576)] * 30  # SmolLM2's targets
    sizes = q.Sizes()
    assert q.matched_rank(sizes, shapes) == 13
    assert q.rank_eta("selora-w-haar-r16", sizes) == (16, 0.2) and q.rank_eta("selora-w-haar-r64", sizes) == (64, 0.8)
    assert q.rank_eta("lora-r32", sizes) == (32, 0.6)
    spec = q.spec_for("selora-w-haar-r64", sizes, shapes, 0)
    assert (spec.config.r, spec.config.eta, spec.config.alpha, spec.config.wavelet) == (64, 0.8, 128.0, "haar")
    runs = [{"phase": "sweep", "method": "m", "lr": lr, "validation_loss": loss} for lr, loss in
            [(2e-4, 1.0), (6e-4, 0.5), (2e-3, 0.7)]] + [{"phase": "seed", "method": "m", "lr": 2e-3, "validation_loss": 0.1}]
    assert q.chosen_lrs(runs) == {"m": 6e-4}
    assert q.chosen_lrs([dict(r, task="extraction") for r in runs], "addition") == {}


def test_method_names_and_the_init_ablation(tiny_model):
    assert stats.parse_method("selora-w-haar-r16-init4") == ("selora-w-haar", 16, 4.0, False)
    assert stats.parse_method("selora-f-init0.25") == ("selora-f", None, 0.25, False)
    assert stats.parse_method("selora-f-proj") == ("selora-f", None, 1.0, True)
    assert stats.parse_method("lora-r32") == ("lora-r32", None, 1.0, False)
    assert stats.base_method("selora-w-haar-r64") == "selora-w-haar"
    from selora_serve.training.inject import adapted_layers, inject
    from selora_serve.training.job import load_model

    model = load_model(str(tiny_model))
    sizes = q.Sizes(rank=4, eta=0.5)
    inject(model, q.spec_for("selora-f-init4", sizes, q.target_shapes_of(model), 0))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    q.scale_initial_a(model, 4.0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, before[name] * (4.0 if ".lora_A." in name else 1.0))
    assert all(layer.lora_B.coefficients().abs().sum() == 0 for layer in adapted_layers(model).values())


def test_stored_records_are_keyed_by_what_shaped_them():
    sizes = q.Sizes()
    assert sizes.key("addition") == q.Sizes(extraction_train=99, seeds=9, lrs=(1e-3,)).key("addition")
    assert sizes.key("extraction") == q.Sizes(train=99, digits=4).key("extraction")
    assert sizes.key("addition") != q.Sizes(train=99).key("addition") != q.Sizes(batch=4).key("addition")
    assert sizes.key("extraction") != q.Sizes(extraction_train=99).key("extraction")


def test_the_ladder_extends_a_sweep_until_bracketed():
    initial = (4e-4, 8e-4, 1.6e-3, 3.2e-3)
    assert q.next_rung(list(initial), 8e-4, 2, initial) is None  # inside: bracketed
    assert q.next_rung(list(initial), 3.2e-3, 2, initial) == 6.4e-3
    assert q.next_rung(list(initial) + [6.4e-3], 6.4e-3, 2, initial) == 1.28e-2
    assert q.next_rung(list(initial) + [6.4e-3, 1.28e-2], 1.28e-2, 2, initial) is None  # two rungs: enough
    assert q.next_rung(list(initial), 4e-4, 2, initial) == 2e-4
    assert q.next_rung([2.56e-2], 2.56e-2, 2, (2.56e-2,)) is None  # the ladder ends
    assert q.next_rung(list(initial), 3.2e-3, 0, initial) is None


def test_confidence_intervals_and_paired_verdicts():
    mean, half = stats.ci95([0.30, 0.32, 0.34, 0.36, 0.38])
    assert mean == pytest.approx(0.34) and half == pytest.approx(2.776 * 0.0316228 / 5 ** 0.5, rel=1e-4)
    assert stats.ci95([0.5]) == (0.5, None)
    runs = [{"task": "addition", "method": m, "seed": s, "lr": 1e-3, "heldout_accuracy": acc, "heldout_loss": loss}
            for s, (a, b, la, lb) in enumerate([(0.40, 0.35, 0.50, 0.40), (0.42, 0.36, 0.60, 0.45), (0.38, 0.34, 0.40, 0.41)])
            for m, acc, loss in (("selora-w-haar", a, la), ("lora-matched", b, lb))]
    (row,) = stats.compare(runs, "addition", {"selora-w-haar": 1e-3, "lora-matched": 1e-3})
    assert (row["method"], row["against"], row["seeds"], row["verdict"]) == ("selora-w-haar", "lora-matched", 3, "beats")
    assert row["points"] == pytest.approx(5.0)
    # losses paired by seed: +0.10, +0.15, -0.01 -> mean +0.08, t(2) * sd / sqrt(3); higher loss is worse
    assert row["loss_diff"] == pytest.approx(0.08)
    assert row["loss_ci95"] == pytest.approx(4.303 * statistics.stdev([0.10, 0.15, -0.01]) / 3 ** 0.5)
    assert row["loss_verdict"] == "ties"
    runs = [dict(r, heldout_loss=r["heldout_loss"] + (0.5 if r["method"] == "lora-matched" else 0)) for r in runs]
    assert stats.compare(runs, "addition", {"selora-w-haar": 1e-3, "lora-matched": 1e-3})[0]["loss_verdict"] == "beats"
    # a budget point is compared at its base method's rate
    runs += [dict(r, method="selora-w-haar-r64", heldout_accuracy=r["heldout_accuracy"] + 0.01)
             for r in runs if r["method"] == "selora-w-haar"]
    rows = stats.compare(runs, "addition", {"selora-w-haar": 1e-3, "lora-matched": 1e-3})
    row = next(r for r in rows if (r["method"], r["against"]) == ("selora-w-haar-r64", "selora-w-haar"))
    assert row["seeds"] == 3 and row["points"] == pytest.approx(1.0) and row["loss_diff"] == pytest.approx(0.0)
    assert stats.verdict(-1.0, 2.0) == "ties" and stats.verdict(-3.0, 2.0) == "loses"


def test_bad_options_are_refused(capsys):
    for argv, message in [(["--methods", "lora-r7"], "--methods: unknown lora-r7"),
                          (["--lrs", "fast"], "--lrs: expected numbers"), (["--seeds", "0"], "--seeds must be >= 1"),
                          (["--tasks", "poetry"], "unknown poetry"), (["--lrs", "2"], "every rate must be in (0, 1)")]:
        with pytest.raises(SystemExit):
            q.main(argv)
        assert message in capsys.readouterr().err
