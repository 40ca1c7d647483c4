"""Every spectral factor of one layout decoded in one differentiable call per forward pass.

A SmolLM2 adapter on q, k, v, up, down has 300 factors but only five layouts (a layout is the
matrix shape with its basis, seed and eta: every factor of one layout shares Omega). Decoding
factor by factor costs ~300 small scatter + inverse-transform graphs per step, forward and
backward, a fixed cost that made a short-sequence SeLoRA step ~1.4x LoRA's. A `FactorBank`
stacks its factors' parameters, decodes the (B, k) stack in one op (`decode_batched`: the
serving decoders forward, the transposed transform backward, no autograd graph inside) and hands
each factor its row:

    bank = FactorBank(layout, factors)   # sets factor.bank / factor.index on each factor
    factor()                              # -> bank.row(factor.index): (m, n), differentiable

Contract: `row(i)` equals `decode.decode(factor_i.coefficients(), layout)` in value, and the
gradient it sends to `factor_i.theta` is the per-factor path's (tests/training/test_bank.py pins
both). The stack is decoded again whenever a factor asks for a row it was already given since
the last decode (the next forward pass, or the next micro-batch of an accumulated step: the
previous graph may have been freed by its backward), or when its parameter changed since (an
optimiser step, a loaded state). A module called twice in one forward pass therefore costs a
second decode, never a wrong gradient.

Only grad-enabled forwards use the bank; without a gradient each factor takes the serving fast
path (`materialise`), as before.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..spectral import fused
from ..spectral.adjoint import adjoint
from ..spectral.materialise import MatrixLayout, materialise


class _Decode(torch.autograd.Function):
    """(B, k) -> (B, m, n): a fast decode forward, the hand-written adjoint backward. On CPU,
    wavelets take the compiled kernels both ways (`fused.decode_stacked`, `fused.adjoint_stacked`);
    Fourier bases and other devices take `materialise` and `spectral.adjoint`."""

    @staticmethod
    def forward(ctx, coef: torch.Tensor, layout: MatrixLayout, bank: "FactorBank | None" = None) -> torch.Tensor:
        ctx.layout, ctx.bank = layout, bank
        ctx.compiled = _compiled(coef.device, layout)
        if ctx.compiled:
            chunks = fused.decode_stacked(coef.detach(), None, fused.FLOAT_BITS, 1, layout)
            return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return materialise(coef.detach(), layout, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.bank is not None and ctx.bank.keep_matrix_grad:
            ctx.bank.add_matrix_grad(grad)
        return transpose(grad, ctx.layout, ctx.compiled), None, None


def _compiled(device: torch.device, layout: MatrixLayout) -> bool:
    """Whether the compiled kernels decode (and transpose) this layout here: wavelets on CPU."""
    return device.type == "cpu" and layout.basis.name == "wavelet"


def transpose(grad: torch.Tensor, layout: MatrixLayout, compiled: bool) -> torch.Tensor:
    """(B, m, n) -> (B, k): the adjoint of the decode, compiled or plain."""
    if compiled:
        return fused.adjoint_stacked(grad, layout)
    return adjoint(grad.contiguous(), layout)


def decode_batched(coef: torch.Tensor, layout: MatrixLayout, bank: "FactorBank | None" = None) -> torch.Tensor:
    """(B, k) float32 -> (B, m, n) float32, differentiable; equal to `decode.decode` in value and
    gradient (one fast decode forward, one `spectral.adjoint` pass backward). With a `bank` that
    keeps matrix gradients, the backward also hands it dLoss/d(matrices)."""
    return _Decode.apply(coef, layout, bank)


class FactorBank:
    """The factors of one layout, decoded together; see the module docstring."""

    def __init__(self, layout: MatrixLayout, factors: Sequence):
        if not factors:
            raise ValueError("a FactorBank needs at least one factor")
        gains = {f.gain for f in factors}
        if any(f.layout != layout for f in factors) or len(gains) != 1:
            raise ValueError(f"every factor of a bank must have layout {layout.shape} (and one gain)")
        self.layout = layout
        self.gain = gains.pop()
        self.factors = list(factors)
        for index, factor in enumerate(self.factors):
            factor.attach(self, index)
        self._rows: tuple[torch.Tensor, ...] | None = None
        self._given: list[bool] = [False] * len(self.factors)
        self._versions: list[int] = []
        self.decodes = 0  # how many times the stack was decoded (for tests and profiling)
        # dLoss/d(decoded matrices), summed over backward passes until taken: for an optimiser
        # that steps in the matrices' coordinates (`projected.ProjectedAdamW`)
        self.keep_matrix_grad = False
        self.matrix_grad: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.factors)

    def _decode(self) -> None:
        thetas = [f.theta for f in self.factors]
        stacked = torch.stack(thetas)  # backward: one unbind of the (B, k) gradient
        coef = stacked * self.gain if self.gain != 1.0 else stacked
        # unbind, not indexing: its backward stacks the B row gradients in one op, where each
        # `select` would scatter into a zero tensor the size of the whole stack.
        self._rows = decode_batched(coef, self.layout, self).unbind(0)
        self._given = [False] * len(self.factors)
        self._versions = [t._version for t in thetas]
        self.decodes += 1

    def row(self, index: int) -> torch.Tensor:
        """Factor `index`'s (m, n) matrix from the current decode (decoding first if stale)."""
        theta = self.factors[index].theta
        if self._rows is None or self._given[index] or self._versions[index] != theta._version:
            self._decode()
        self._given[index] = True
        return self._rows[index]  # type: ignore[index]

    def add_matrix_grad(self, grad: torch.Tensor) -> None:
        if self.matrix_grad is None:
            self.matrix_grad = grad.detach().clone()
        else:
            self.matrix_grad.add_(grad)

    def take_matrix_grad(self) -> torch.Tensor | None:
        grad, self.matrix_grad = self.matrix_grad, None
        return grad

    def transpose(self, matrices: torch.Tensor) -> torch.Tensor:
        """(B, m, n) -> (B, k): the adjoint of this bank's decode (what its backward applies)."""
        return transpose(matrices, self.layout, _compiled(matrices.device, self.layout))

    def __getstate__(self) -> dict:
        # Copies (copy.deepcopy of a model, pickling) start without the decoded stack: its
        # tensors are not graph leaves, and the next read decodes anyway.
        return {**self.__dict__, "_rows": None, "matrix_grad": None}

    def release(self) -> None:
        """Drop the decoded stack (and the graph it holds), e.g. after training."""
        self._rows = None


def banks_of(model: torch.nn.Module) -> list[FactorBank]:
    """The banks of `model`'s spectral factors, in module order (each once)."""
    seen: dict[int, FactorBank] = {}
    for module in model.modules():
        bank = getattr(module, "bank", None)
        if isinstance(bank, FactorBank):
            seen.setdefault(id(bank), bank)
    return list(seen.values())


def build_banks(factors: Sequence) -> list[FactorBank]:
    """Group `factors` (SpectralFactor modules) by layout, one bank each, in first-seen order."""
    groups: dict[MatrixLayout, list] = {}
    for factor in factors:
        groups.setdefault(factor.layout, []).append(factor)
    return [FactorBank(layout, members) for layout, members in groups.items()]
