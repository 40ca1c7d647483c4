"""Factor banks: one batched decode per layout per forward pass, equal to one decode per factor."""

import copy

import pytest
import torch

from selora_serve.spectral.basis import Basis
from selora_serve.spectral.materialise import layout_for
from selora_serve.training.bank import FactorBank, build_banks
from selora_serve.training.inject import adapted_layers, inject
from selora_serve.training.layers import SpectralFactor
from selora_serve.training.trainer import TrainConfig, fit

from .conftest import spec_for

SPECTRAL = ["haar", "db4", "fourier", "sedora"]


def _banks(model) -> list[FactorBank]:
    seen = {}
    for layer in adapted_layers(model).values():
        for f in (layer.lora_A, layer.lora_B):
            if isinstance(f, SpectralFactor) and f.bank is not None:
                seen[id(f.bank)] = f.bank
    return list(seen.values())


def _thetas(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _twins(load, kind, seed=3):
    """The same adapter injected twice: with banks, and factor by factor. B is randomised so
    that gradients reach A too."""
    banked, plain = load(), load()
    inject(banked, spec_for(kind, seed=seed))
    inject(plain, spec_for(kind, seed=seed), batched=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (name, p), q in zip(_thetas(banked).items(), _thetas(plain).values()):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05 + p)
            q.copy_(p)
    return banked, plain


def _loss(model, batch):
    out = model(**batch).logits
    return (out.float() ** 2).mean()


@pytest.fixture
def load(tiny_model):
    from selora_serve.training.job import load_model

    return lambda: load_model(tiny_model)


@pytest.mark.parametrize("kind", SPECTRAL)
def test_banked_values_and_gradients_equal_the_per_factor_path(kind, load, batch):
    banked, plain = _twins(load, kind)
    banks = _banks(banked)
    assert banks and not _banks(plain)
    # one bank per layout: every factor of a bank shares its layout, no layout is in two banks
    assert len({b.layout for b in banks}) == len(banks)
    assert sum(len(b) for b in banks) == 2 * len(adapted_layers(banked))
    loss_banked, loss_plain = _loss(banked, batch), _loss(plain, batch)
    torch.testing.assert_close(loss_banked, loss_plain, atol=1e-6, rtol=1e-6)
    loss_banked.backward()
    loss_plain.backward()
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(_thetas(banked).items(), _thetas(plain).values())]
    assert all(g is not None and h is not None for _, g, h in grads)
    assert any(g.abs().sum() > 0 for n, g, _ in grads if "lora_A" in n)
    for name, g, h in grads:
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5, msg=name)
    assert all(b.decodes == 1 for b in banks)  # one decode per layout for the whole forward pass


def test_accumulated_steps_train_to_the_same_weights(load, qa_examples, tokenizer):
    """Two micro-batches per step (the graph of the first is freed before the second forward)
    and several optimiser steps: the banked model ends where the per-factor one does."""
    from selora_serve.training.data import pad_token_id

    banked, plain = _twins(load, "db4")
    config = TrainConfig(epochs=2, lr=1e-2, batch_size=2, grad_accum=2, warmup=0.0, seed=1)
    for model in (banked, plain):
        fit(model, qa_examples, config, pad_id=pad_token_id(tokenizer), progress=False)
    for (name, p), q in zip(_thetas(banked).items(), _thetas(plain).values()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)
    forwards = config.epochs * -(-len(qa_examples) // config.batch_size)
    assert all(b.decodes == forwards for b in _banks(banked))  # once per micro-batch forward


def test_a_changed_parameter_is_decoded_again_and_no_grad_skips_the_bank():
    layout = layout_for(Basis("wavelet", "haar"), 0, 0.5, (4, 6))
    factors = [SpectralFactor(torch.randn(layout.k), layout) for _ in range(3)]
    (bank,) = build_banks(factors)
    first = factors[0]()
    assert bank.decodes == 1
    with torch.no_grad():  # an optimiser step between two factors' reads of one forward pass
        factors[1].theta.add_(1.0)
    second = factors[1]()
    assert bank.decodes == 2
    plain = copy.deepcopy(factors[1])
    plain.bank = None
    torch.testing.assert_close(second, plain(), atol=1e-6, rtol=0)
    torch.testing.assert_close(first, factors[0]().detach(), atol=1e-6, rtol=0)
    assert bank.decodes == 2  # factor 0 was not read from the second decode yet
    with torch.no_grad():
        factors[2]()
        factors[0]()
    assert bank.decodes == 2  # reads without a gradient take the serving path
    factors[0]()
    assert bank.decodes == 3  # a second read of one factor: the next forward pass


def test_a_bank_refuses_mixed_layouts():
    a = SpectralFactor(torch.zeros(8), layout_for(Basis("wavelet", "haar"), 0, 0.5, (4, 4)))
    b = SpectralFactor(torch.zeros(8), layout_for(Basis("wavelet", "haar"), 1, 0.5, (4, 4)))
    with pytest.raises(ValueError, match=r"layout \(4, 4\)"):
        FactorBank(a.layout, [a, b])
    with pytest.raises(ValueError, match="at least one"):
        FactorBank(a.layout, [])
    assert len(build_banks([a, b])) == 2
