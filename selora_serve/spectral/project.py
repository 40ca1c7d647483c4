"""Least-squares projection of dense matrices onto a spectral support (lossy).

    project(X: (..., m, n), layout) -> c: (..., k) minimising ||materialise(c) - X||_F

Conjugate gradient on the normal equations. The operator c -> materialise(c) is linear, so its
adjoint is one autograd vector-Jacobian product through the reference inverse. The start is the
forward transform restricted to Omega, which is already the answer for orthogonal wavelets.
"""

from __future__ import annotations

import torch

from .materialise import MatrixLayout, gather_coefficients, scatter_spectrum


def _operator(layout: MatrixLayout):
    def forward(c: torch.Tensor) -> torch.Tensor:
        return layout.basis.inverse_reference(scatter_spectrum(c, layout), layout.shape)

    def adjoint(y: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(*y.shape[:-2], layout.k, dtype=y.dtype, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(forward(c), c, y)
        return grad

    return forward, adjoint


def project(matrix: torch.Tensor, layout: MatrixLayout, *, iters: int = 300, tol: float = 1e-14) -> torch.Tensor:
    """Coefficients (..., k) float32 whose materialisation is nearest to `matrix` (..., m, n)."""
    x = matrix.detach().double()
    forward, adjoint = _operator(layout)
    c = gather_coefficients(layout.basis.forward(x), layout)
    rhs = adjoint(x)
    res = rhs - adjoint(forward(c))
    p = res.clone()
    rs = (res * res).sum(-1, keepdim=True)
    scale = (rhs * rhs).sum(-1, keepdim=True).clamp_min(1e-300)
    for _ in range(iters):
        if bool((rs <= tol * scale).all()):
            break
        ap = adjoint(forward(p))
        alpha = rs / (p * ap).sum(-1, keepdim=True).clamp_min(1e-300)
        c = c + alpha * p
        res = res - alpha * ap
        rs_new = (res * res).sum(-1, keepdim=True)
        p = res + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
    return c.float()
