"""Putting adapters into a model, and taking the trained ones out.

    inject(model, spec)            freeze every parameter, replace each target nn.Linear (by the
                                   last component of its name) with an AdaptedLinear holding
                                   freshly initialised factors, spectral ones grouped in one
                                   FactorBank per layout; returns {module path: layer}
    extract_adapter(model, spec, base) -> SpectralAdapter   (for checkpoint.save_checkpoint)
    extract_dense(model)           -> {module path: (A, B)}  (the LoRA baseline's export)

Module paths are the wrapped Linear's path in the model ("model.layers.0.self_attn.q_proj"),
the names `base_model.target_shapes` and the checkpoint format use.

Initialisation (METHOD.md, "Initialisation"): spectral factors come from `adapter.init_adapter`,
the same function `selora-convert init` uses, so a training run starts exactly where an
initialised checkpoint with the same config does: variance-matched Kaiming coefficients for A,
zeros for B, SeDoRA magnitudes ||W0|| per output row. Dense LoRA gets PEFT's default:
Kaiming-uniform(a=sqrt(5)) A, zero B. Either way the adapted model starts equal to the base.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapter import BaseModelInfo, ModuleCoefficients, SpectralAdapter, init_adapter
from ..base_model import target_shapes
from ..spectral.init import kaiming_uniform
from .bank import build_banks
from .layers import AdaptedLinear, AdapterSpec, DenseFactor, SpectralFactor


def _row_norms(linears: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """||W0|| per output row: DoRA's initial magnitude."""
    return {name: torch.linalg.norm(lin.weight.detach().float(), dim=1).cpu() for name, lin in linears.items()}


def target_linears(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """{path: nn.Linear} of the layers to adapt; unknown targets raise (see target_shapes)."""
    shapes = target_shapes(model.config, targets)  # validates, names the layers that exist
    modules = dict(model.named_modules())
    found = {}
    for name, (d_in, d_out) in sorted(shapes.items()):
        mod = modules.get(name)
        if isinstance(mod, AdaptedLinear):
            raise ValueError(f"{name} already carries an adapter: inject once per model")
        if not isinstance(mod, nn.Linear) or (mod.in_features, mod.out_features) != (d_in, d_out):
            raise ValueError(f"{name}: expected nn.Linear({d_in}, {d_out}) in the loaded model, got {mod!r}")
        found[name] = mod
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject(model: nn.Module, spec: AdapterSpec, *, batched: bool = True) -> dict[str, AdaptedLinear]:
    """Freeze `model` and wrap its target layers; returns the new layers by module path.

    Only the factors (coefficients or dense A, B) and, for SeDoRA, the magnitudes are trainable.
    With `batched` (the default), the spectral factors of each layout are decoded together, once
    per forward pass (`bank.FactorBank`); `batched=False` keeps one decode per factor (the
    reference the banks are tested against; same values and gradients).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    config = spec.config
    linears = target_linears(model, config.target_modules)
    shapes = {name: (lin.in_features, lin.out_features) for name, lin in linears.items()}
    layers: dict[str, AdaptedLinear] = {}
    if spec.dense:
        generator = torch.Generator().manual_seed(config.seed)
        for name in sorted(linears):
            d_in, d_out = shapes[name]
            a = DenseFactor(kaiming_uniform((config.r, d_in), generator))
            b = DenseFactor(torch.zeros(d_out, config.r))
            layers[name] = AdaptedLinear(linears[name], a, b, scaling=config.scaling, dropout=spec.dropout)
    else:
        magnitudes = _row_norms(linears) if config.variant == "sedora" else None
        # Only the coefficients are used; the base model is recorded when the adapter is extracted.
        init = init_adapter(config, BaseModelInfo("", ""), shapes, magnitudes=magnitudes)
        for name, mod in init.modules.items():
            a = SpectralFactor(mod.coef_a, init.layout_a(mod))
            b = SpectralFactor(mod.coef_b, init.layout_b(mod))
            layers[name] = AdaptedLinear(
                linears[name], a, b, scaling=config.scaling, dropout=spec.dropout, magnitude=mod.magnitude
            )
    for name, layer in layers.items():
        layer.to(linears[name].weight.device)
        _replace(model, name, layer)
    if batched and not spec.dense:
        build_banks([f for name in sorted(layers) for f in (layers[name].lora_A, layers[name].lora_B)])
    return layers


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Every AdaptedLinear in `model`, by module path."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, AdaptedLinear)}


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def extract_adapter(model: nn.Module, spec: AdapterSpec, base: BaseModelInfo) -> SpectralAdapter:
    """The trained spectral adapter (coefficients copied to CPU float32), ready to save."""
    if spec.dense:
        raise ValueError("dense LoRA has no spectral coefficients: use extract_dense (and a PEFT directory)")
    adapter = SpectralAdapter(spec.config, base)
    for name, layer in sorted(adapted_layers(model).items()):
        if not isinstance(layer.lora_A, SpectralFactor):
            raise ValueError(f"{name} has dense factors, not spectral ones")
        adapter.modules[name] = ModuleCoefficients(
            layer.in_features,
            layer.out_features,
            layer.lora_A.coefficients().detach().float().cpu().clone(),
            layer.lora_B.coefficients().detach().float().cpu().clone(),
            None if layer.magnitude is None else layer.magnitude.detach().float().cpu().clone(),
        )
    return adapter


def extract_dense(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (A (r, in), B (out, r))} float32 on CPU, for any factor kind."""
    with torch.no_grad():
        return {
            name: tuple(f.detach().float().cpu().clone() for f in layer.factors())  # type: ignore[misc]
            for name, layer in sorted(adapted_layers(model).items())
        }
