"""benchmarks/fourier_gap.py: the sign step per basis, and its smoke run."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import fourier_gap as fg
from selora_serve.spectral.basis import Basis


def test_lora_sign_step_is_even_and_a_fourier_step_follows_an_outlier_channel():
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(8, 64, generator=generator)
    grad[:, 5] *= 100.0  # one input channel carries most of the gradient
    lora = fg.channel_norms(fg.sign_step(grad, None, 0.6), "A")
    assert torch.allclose(lora, torch.full((64,), 8 ** 0.5))
    fourier = fg.channel_norms(fg.sign_step(grad, Basis("fourier"), 0.0), "A") ** 2
    haar = fg.channel_norms(fg.sign_step(grad, Basis("wavelet", "haar"), 0.0), "A") ** 2
    assert fourier[5] / fourier.sum() > 0.3 > 0.05 > haar[5] / haar.sum()


def test_quick_run(capsys, tmp_path):
    out = tmp_path / "gap.json"
    assert fg.main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc == json.loads(printed.strip().splitlines()[-1])
    assert {(r["module"], r["factor"]) for r in doc["rows"]} >= {("q_proj", "A"), ("down_proj", "B")}
    for row in doc["rows"]:
        assert row["lora_max_over_median"] == pytest.approx(1.0)  # LoRA's sign step: every channel alike
        assert 0 < row["fourier_top_share"] <= 1 and row["grad_max_over_median"] >= 1
    assert "fourier" in printed and "grad max/med" in printed


@pytest.mark.parametrize("argv", [["--examples", "0"], ["--eta", "1.0"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        fg.main(argv)
    assert "--examples >= 1 and --eta in [0, 1)" in capsys.readouterr().err
