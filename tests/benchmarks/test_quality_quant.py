"""benchmarks/quality_quant.py: its records and summary; and `quantised_scores` restoring the
trained coefficients (the training runs themselves are the benchmark's, minutes each)."""

from __future__ import annotations

import torch

from benchmarks import quality_quant


def test_records_and_summary_report_the_change_per_bits():
    run = {"method": "selora-f", "seed": 1, "lr": 6e-4, "heldout_accuracy": 0.50, "heldout_loss": 1.0,
           "quantised": {8: {"heldout_accuracy": 0.50, "heldout_loss": 1.001},
                         4: {"heldout_accuracy": 0.47, "heldout_loss": 1.05}}}
    records = quality_quant.records_of(run)
    assert [r["bits"] for r in records] == [None, 8, 4]
    assert set(records[0]) == {"task", "method", "seed", "lr", "bits", "heldout_accuracy", "heldout_loss"}
    other = [dict(r, seed=2, heldout_accuracy=r["heldout_accuracy"] + (0.01 if r["bits"] == 4 else 0)) for r in records]
    s = quality_quant.summary(records + other)
    assert s["8"] == {"adapters": 2, "accuracy_change_points": 0.0, "loss_change": 0.001,
                      "worst_accuracy_change_points": 0.0}
    assert s["4"]["accuracy_change_points"] == -2.5 and s["4"]["worst_accuracy_change_points"] == -3.0


def test_quantised_scores_restore_the_trained_coefficients(tiny_model):
    from benchmarks.quality_real import quantised_scores
    from selora_serve.config import SeLoRAConfig
    from selora_serve.training.inject import inject
    from selora_serve.training.job import load_model
    from selora_serve.training.layers import AdapterSpec, SpectralFactor

    model = load_model(str(tiny_model), device="cpu")
    inject(model, AdapterSpec.for_variant("selora", SeLoRAConfig(r=4, alpha=8, eta=0.5, target_modules=("q_proj",))))
    factors = [m for m in model.modules() if isinstance(m, SpectralFactor)]
    with torch.no_grad():
        for f in factors:
            f.theta.normal_()
    before = [f.theta.clone() for f in factors]
    seen = []
    import benchmarks.quality_real as qr

    def fake_evaluate(m, examples, pad_id):
        seen.append(torch.cat([f.theta.flatten() for f in factors]).clone())
        return 0.0, 1.0

    original, qr.tasks.evaluate = qr.tasks.evaluate, fake_evaluate
    try:
        scores = quantised_scores(model, [], 0, (8, 4))
    finally:
        qr.tasks.evaluate = original
    assert scores == {8: {"heldout_accuracy": 1.0, "heldout_loss": 0.0}, 4: {"heldout_accuracy": 1.0, "heldout_loss": 0.0}}
    trained = torch.cat([t.flatten() for t in before])
    assert not torch.equal(seen[0], trained) and not torch.equal(seen[1], seen[0]), "evaluated quantised, per bits"
    assert (seen[1] - trained).abs().max() > (seen[0] - trained).abs().max(), "4 bits err more than 8"
    assert all(torch.equal(f.theta, t) for f, t in zip(factors, before)), "restored"


def test_without_chosen_learning_rates_it_says_what_to_run(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        quality_quant.main(["--lrs", str(tmp_path / "none.json"), "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert "no chosen learning rate for selora-w-haar, selora-w-db4, selora-f; run benchmarks/quality_real.py" in err
