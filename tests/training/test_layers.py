"""The trainable layer: what trains, how it starts, and its differentiable decoding path."""

import pytest
import torch

from selora_serve.config import SeLoRAConfig
from selora_serve.spectral.basis import Basis
from selora_serve.spectral.materialise import layout_for, materialise
from selora_serve.training.inject import adapted_layers, inject, trainable_parameters
from selora_serve.training.layers import AdaptedLinear, AdapterSpec, DenseFactor, SpectralFactor

from .conftest import VARIANTS, logits, spec_for

KINDS = list(VARIANTS)


BASES = [Basis("wavelet", "haar"), Basis("wavelet", "db4"), Basis("fourier")]


@pytest.mark.parametrize("basis", BASES, ids=lambda b: b.label)
@pytest.mark.parametrize("shape", [(8, 128), (256, 8), (7, 13)])
def test_spectral_factor_gradient_is_the_fast_paths_jacobian(basis, shape):
    """The factor decodes through `decode` when a gradient is wanted: its values equal the
    serving fast path's, and its gradient equals the Jacobian of the fast path (whose columns
    are the fast decodings of the unit coefficient vectors)."""
    layout = layout_for(basis, 3, 0.6, shape)
    factor = SpectralFactor(torch.randn(layout.k), layout)
    upstream = torch.randn(shape)
    (factor() * upstream).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(factor(), materialise(factor.coefficients(), layout), atol=1e-6, rtol=0)
        jacobian = materialise(torch.eye(layout.k), layout)  # (k, m, n): d matrix / d coefficient
    # theta = coefficients / gain, so d/d theta = gain * d/d coefficients.
    expected = factor.gain * (jacobian * upstream).sum((1, 2))
    torch.testing.assert_close(factor.theta.grad, expected, atol=1e-5 * factor.gain, rtol=1e-5)


@pytest.mark.parametrize("shape", [(32, 128), (5, 9), (1, 1), (2, 6)])
def test_training_haar_decoder_equals_the_reference(shape):
    from selora_serve.spectral.materialise import materialise_reference
    from selora_serve.training.decode import decode

    layout = layout_for(Basis("wavelet", "haar"), 7, 0.3, shape)
    coef = torch.randn(3, layout.k, dtype=torch.float64)
    torch.testing.assert_close(decode(coef, layout), materialise_reference(coef, layout), atol=1e-6, rtol=0)


def test_fourier_factors_train_in_the_orthonormal_scale():
    """One unit step of theta moves a Fourier-decoded matrix like torch's "ortho" ifft2: v2's
    Hartley basis is orthonormal already (gain 1); v1's Re(ifft2) is rescaled."""
    layout = layout_for(Basis("fourier"), 0, 0.0, (16, 8))
    hartley = SpectralFactor(torch.zeros(layout.k), layout)
    assert hartley.gain == 1.0
    with torch.no_grad():
        hartley.theta[5] = 1.0
        spectrum = torch.zeros(16 * 8)
        spectrum[layout.positions[5]] = 1.0
        ortho = torch.fft.ifft2(spectrum.reshape(16, 8), norm="ortho")
        torch.testing.assert_close(hartley(), ortho.real + ortho.imag, atol=1e-6, rtol=0)
        assert hartley().norm().item() == pytest.approx(1.0, rel=1e-6)
    layout = layout_for(Basis("fourier-real"), 0, 0.0, (16, 8))
    factor = SpectralFactor(torch.zeros(layout.k), layout)
    assert factor.gain == (16 * 8) ** 0.5
    with torch.no_grad():
        factor.theta[5] = 1.0
        spectrum = torch.zeros(16 * 8)
        spectrum[layout.positions[5]] = 1.0
        ortho = torch.fft.ifft2(spectrum.reshape(16, 8), norm="ortho").real
        torch.testing.assert_close(factor(), ortho, atol=1e-6, rtol=0)
    assert SpectralFactor(torch.zeros(8), layout_for(Basis("wavelet", "haar"), 0, 0.5, (4, 4))).gain == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_only_adapter_parameters_train_and_the_base_gets_no_gradient(kind, base_model, batch):
    spec = spec_for(kind)
    inject(base_model, spec)
    names = set(trainable_parameters(base_model))
    suffixes = (".lora_A.weight", ".lora_B.weight") if spec.dense else (".lora_A.theta", ".lora_B.theta")
    if kind == "sedora":
        suffixes += (".magnitude",)
    assert names and all(n.endswith(suffixes) for n in names), sorted(names)[:4]
    layers = adapted_layers(base_model)
    per_layer = len(suffixes)
    assert len(names) == per_layer * len(layers) == per_layer * 2 * 5  # 2 layers x 5 targets
    base_model.train()
    base_model(**batch, labels=batch["input_ids"]).loss.backward()
    for name, p in base_model.named_parameters():
        if name in names:
            continue
        assert not p.requires_grad and p.grad is None, name
    # At step 0 B = 0, so only B (and DoRA's magnitude) can receive a non-zero gradient.
    b_grads = [p.grad for n, p in base_model.named_parameters() if ".lora_B." in n]
    assert all(g is not None and g.abs().max() > 0 for g in b_grads)


@pytest.mark.parametrize("kind", KINDS)
def test_initial_a_has_kaiming_variance_and_b_is_zero(kind, base_model):
    spec = spec_for(kind, r=16)
    layers = inject(base_model, spec)
    for name, layer in layers.items():
        a, b = layer.factors()
        assert a.shape == (16, layer.in_features) and b.shape == (layer.out_features, 16)
        assert torch.count_nonzero(b) == 0, name
        # Kaiming-uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance 1/(3 fan_in).
        # A matches its auxiliary Kaiming matrix's sample variance, itself within a few % of it.
        expected = 1.0 / (3 * layer.in_features)
        assert abs(a.var().item() / expected - 1) < 0.15, (name, a.var().item(), expected)
        assert abs(a.mean().item()) < 4 * (expected / a.numel()) ** 0.5
        if kind == "sedora":
            torch.testing.assert_close(layer.magnitude.detach(), torch.linalg.norm(layer.base.weight, dim=1))


@pytest.mark.parametrize("kind", KINDS)
def test_adapted_model_equals_the_base_at_step_zero(kind, tiny_model, base_model, batch):
    from selora_serve.training.job import load_model

    expected = logits(load_model(tiny_model), batch)
    inject(base_model, spec_for(kind, dropout=0.1))
    torch.testing.assert_close(logits(base_model, batch), expected, atol=1e-6, rtol=0)
    base_model.train()  # dropout only touches the (zero) update
    torch.testing.assert_close(logits(base_model, batch), expected, atol=1e-6, rtol=0)


def test_spectral_initialisation_is_selora_convert_inits(tiny_model, base_model, tmp_path):
    """A run starts exactly where `selora-convert init` with the same config does."""
    from selora_serve.checkpoint import load_checkpoint
    from selora_serve.convert import init_checkpoint

    spec = spec_for("sedora", seed=5)
    layers = inject(base_model, spec)
    ckpt = load_checkpoint(init_checkpoint(tiny_model, tmp_path / "init", spec.config))
    assert set(ckpt.modules) == set(layers)
    for name, mod in ckpt.modules.items():
        assert torch.equal(layers[name].lora_A.coefficients().detach(), mod.coef_a)
        assert torch.equal(layers[name].lora_B.coefficients().detach(), mod.coef_b)
        torch.testing.assert_close(layers[name].magnitude.detach(), mod.magnitude)


def test_dora_forward_matches_its_merged_weight_and_scaling_applies():
    """Eval-mode DoRA equals x @ merged_weight(...)^T + bias (merge.py's formula)."""
    from selora_serve.merge import merged_weight

    torch.manual_seed(1)
    base = torch.nn.Linear(12, 6)
    a, b = torch.randn(4, 12), torch.randn(6, 4)
    magnitude = torch.rand(6) + 0.5
    layer = AdaptedLinear(base, DenseFactor(a), DenseFactor(b), scaling=2.0, dropout=0.2, magnitude=magnitude).eval()
    x = torch.randn(3, 12)
    expected = torch.nn.functional.linear(x, merged_weight(base.weight.detach(), a, b, 2.0, magnitude), base.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    plain = AdaptedLinear(torch.nn.Linear(12, 6), DenseFactor(a), DenseFactor(b), scaling=2.0).eval()
    torch.testing.assert_close(plain(x), plain.base(x) + 2.0 * x @ a.T @ b.T, atol=1e-5, rtol=1e-5)


def test_adapter_spec_rejects_bad_values():
    config = SeLoRAConfig(r=8, alpha=16)
    with pytest.raises(ValueError, match="dropout"):
        AdapterSpec(config, dropout=1.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        AdapterSpec.for_variant("dora", config)
    with pytest.raises(ValueError, match="no magnitude"):
        AdapterSpec(SeLoRAConfig(variant="sedora"), dense=True)
    spec = AdapterSpec.for_variant("sedora", config)
    assert spec.variant == "sedora" and spec.label == "SeDoRA-W (haar)"
    assert AdapterSpec.from_dict(spec.to_dict()) == spec
    assert AdapterSpec.for_variant("lora", config).label == "LoRA"


def test_unknown_target_is_named(base_model):
    with pytest.raises(ValueError, match="o_proj"):
        inject(base_model, spec_for("haar", targets=("q_proj", "qkv")))
