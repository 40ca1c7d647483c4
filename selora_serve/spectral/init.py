"""Initialisation of spectral coefficients (SeLoRA paper, section 2.3).

c and an auxiliary spatial matrix A' of the target shape are drawn with LoRA's default
Kaiming-uniform (a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = the last dim);
c is then rescaled by sqrt(Var(A') / Var(A)) so that the materialised A has exactly the
(empirical) variance of A'. B's coefficients start at zero.
"""

from __future__ import annotations

import math

import torch

from .materialise import MatrixLayout, scatter_spectrum


def kaiming_uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """torch.nn.init.kaiming_uniform_(t, a=sqrt(5)) for a tensor of `shape`, from `generator`."""
    bound = 1.0 / math.sqrt(shape[-1])
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def init_coefficients(layout: MatrixLayout, generator: torch.Generator) -> torch.Tensor:
    """Variance-matched Kaiming coefficients (k,) float32 for one matrix of `layout`."""
    spectrum = kaiming_uniform(layout.spectral_shape, generator).flatten()
    coef = spectrum[torch.from_numpy(layout.positions.copy())]
    auxiliary = kaiming_uniform(layout.shape, generator)
    spatial = _spatial64(coef, layout)
    var_spatial = spatial.var()
    if var_spatial <= 0:
        raise ValueError(f"cannot variance-match a {layout.shape} matrix with k={layout.k}")
    coef = coef * torch.sqrt(auxiliary.var() / var_spatial)
    return coef.float()


def _spatial64(coef: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
    return layout.basis.inverse_reference(scatter_spectrum(coef.double(), layout), layout.shape)
