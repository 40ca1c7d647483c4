"""benchmarks/quality.py (the synthetic-task quality benchmark on a tiny pretrained Llama): its
smoke run reports every method at its parameter count and ends stdout with the JSON it wrote."""

from __future__ import annotations

import json

from benchmarks import quality


def test_quick_run_reports_every_method_at_its_parameter_count(tmp_path, capsys):
    out = tmp_path / "quality.json"
    assert quality.main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc == json.loads(printed.strip().splitlines()[-1]) and doc["quick"]
    rows = {row["method"].split(" eta")[0].split(" r=")[0]: row for row in doc["summary"]}
    assert set(rows) == {"SeLoRA-W haar", "SeLoRA-F", "LoRA"} and len(doc["summary"]) == 4
    selora = rows["SeLoRA-F"]["trainable_parameters"]
    assert rows["SeLoRA-W haar"]["trainable_parameters"] == selora
    matched = next(r for r in doc["summary"] if "matched" in r["method"])["trainable_parameters"]
    lora = next(r for r in doc["summary"] if r["method"] == "LoRA r=32")["trainable_parameters"]
    assert selora < matched < lora and abs(matched - selora) / selora < 0.05  # matched means matched
    assert all(r["runs"] == 1 and r["eval_loss_mean"] > 0 for r in doc["summary"])
    assert "LoRA r=13 (matched)" in printed
