"""benchmarks/publish.py: the epilogue every benchmark shares, and the provenance of a document."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.publish import provenance, publish


def test_publish_prints_the_table_writes_plots_and_ends_with_the_document(tmp_path, capsys):
    out, drawn = tmp_path / "r.json", []
    report = {"benchmark": "x", "rows": [1, 2]}
    publish(report, table=lambda r: print(f"table of {len(r['rows'])}"), json_path=str(out),
            plot=lambda r, p: drawn.append((r, p)), plot_path=str(tmp_path / "r.png"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "table of 2" and json.loads(lines[-1]) == report == json.loads(out.read_text())
    assert drawn == [(report, str(tmp_path / "r.png"))]
    publish(report)  # nothing but the JSON line when nothing else is asked for
    assert capsys.readouterr().out.strip() == json.dumps(report)


def test_provenance_names_the_command_and_the_commit():
    p = provenance("train_step.py", ["--threads", "1", "--json", "a b.json"])
    assert p["command"] == "python benchmarks/train_step.py --threads 1 --json 'a b.json'"
    if (Path(__file__).resolve().parents[2] / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", p["git_commit"]), p
    else:  # an exported tree: no commit to name
        assert p["git_commit"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["finished_utc"])
