"""ProjectedAdamW: LoRA's step, projected onto the coefficients; with nothing masked and an
orthonormal basis it trains exactly as LoRA with AdamW does."""

import pytest
import torch

from selora_serve.training.data import pad_token_id
from selora_serve.training.inject import adapted_layers, inject, trainable_parameters
from selora_serve.training.trainer import TrainConfig, fit

from .conftest import spec_for


def _load(tiny_model):
    from selora_serve.training.job import load_model

    return load_model(tiny_model)


@pytest.mark.parametrize("kind", ["haar", "fourier"])
def test_with_nothing_masked_it_follows_lora_trained_with_adamw(kind, tiny_model, qa_examples, tokenizer):
    """eta = 0: the decode is an orthonormal change of basis (the tiny model's shapes are even),
    so stepping the matrices by Adam's direction and projecting is stepping them as LoRA does.
    B starts random so both factors move; clipping is on (its scale reaches the matrix moments)."""
    from dataclasses import replace

    spectral, dense = _load(tiny_model), _load(tiny_model)
    spec = spec_for(kind)
    spec = replace(spec, config=replace(spec.config, eta=0.0))
    inject(spectral, spec)
    inject(dense, spec_for("lora"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, layer in adapted_layers(spectral).items():
            f = layer.lora_B
            f.theta.copy_(torch.randn(f.theta.shape, generator=generator) * 0.05)
            a, b = layer.factors()
            twin = adapted_layers(dense)[name]
            twin.lora_A.weight.copy_(a)
            twin.lora_B.weight.copy_(b)
    config = TrainConfig(epochs=3, lr=2e-2, batch_size=2, grad_accum=2, warmup=0.0, seed=1, max_grad_norm=0.5)
    pad = pad_token_id(tokenizer)
    fit(spectral, qa_examples, replace(config, optimizer="projected-adamw"), pad_id=pad, progress=False)
    result = fit(dense, qa_examples, config, pad_id=pad, progress=False)
    assert result.steps == 6
    moved = 0.0
    with torch.no_grad():
        for name, layer in adapted_layers(spectral).items():
            a, b = layer.factors()
            twin = adapted_layers(dense)[name]
            torch.testing.assert_close(a, twin.lora_A.weight, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(b, twin.lora_B.weight, atol=2e-5, rtol=1e-4)
            moved = max(moved, (b - layer.lora_B.theta.new_zeros(b.shape)).abs().max().item())
    assert moved > 0.05  # the test trained something


def test_masked_steps_stay_in_the_adapters_space_and_differ_from_adamw(tiny_model, qa_examples, tokenizer):
    """eta 0.6: a projected step is not Adam on the coefficients (different weights), and the
    loss still falls."""
    from dataclasses import replace

    pad = pad_token_id(tokenizer)
    runs = {}
    for optimizer in ("adamw", "projected-adamw"):
        model = _load(tiny_model)
        inject(model, spec_for("fourier", dropout=0.0))
        config = TrainConfig(epochs=20, lr=1e-2, batch_size=6, warmup=0.0, seed=0, optimizer=optimizer)
        result = fit(model, qa_examples, config, pad_id=pad, progress=False)
        assert result.losses[-1] < 0.5 * result.losses[0], (optimizer, result.losses[::5])
        runs[optimizer] = trainable_parameters(model)
    assert any(not torch.allclose(p, runs["projected-adamw"][n]) for n, p in runs["adamw"].items())


def test_an_interrupted_projected_run_resumes_to_the_same_weights(tiny_model, qa_examples, tokenizer, tmp_path):
    """SeDoRA: the magnitudes step with AdamW inside the same optimizer; the matrix moments
    are saved and restored with the checkpoint."""
    pad = pad_token_id(tokenizer)
    config = TrainConfig(epochs=2, lr=5e-3, batch_size=2, grad_accum=2, save_every=1, seed=3, optimizer="projected-adamw")

    def run(work, resume=False, stop_at=None):
        model = _load(tiny_model)
        inject(model, spec_for("sedora", dropout=0.1))

        def stop(log):
            if stop_at is not None and log.step == stop_at:
                raise KeyboardInterrupt

        return model, fit(model, qa_examples, config, pad_id=pad, work_dir=work, resume=resume, progress=False,
                          on_step=stop)

    model_a, full = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "w", stop_at=3)
    model_b, resumed = run(tmp_path / "w", resume=True)
    assert resumed.resumed_from == 3 and resumed.losses == pytest.approx(full.losses, abs=1e-6)
    params_b = trainable_parameters(model_b)
    for name, p in trainable_parameters(model_a).items():
        torch.testing.assert_close(params_b[name], p, atol=1e-6, rtol=0)


def test_dense_lora_and_unknown_optimizers_are_refused(base_model, qa_examples, tokenizer):
    inject(base_model, spec_for("lora"))
    with pytest.raises(ValueError, match="'projected-adamw' steps spectral factors decoded in banks; this model has none"):
        fit(base_model, qa_examples, TrainConfig(epochs=1, optimizer="projected-adamw"),
            pad_id=pad_token_id(tokenizer), progress=False)
    with pytest.raises(ValueError, match="optimizer must be one of adamw, projected-adamw, got 'sgd'"):
        TrainConfig(optimizer="sgd")
