"""AdamW whose moments live in the decoded matrices' coordinates, projected onto the coefficients.

Why: Adam normalises every trainable coordinate by its own gradient scale. LoRA's coordinates are
the entries of A and B, so each input and output channel moves by about the learning rate, however
unequal the channels' gradients (a language model's hidden states have outlier channels: on
SmolLM2 the per-channel gradient norms of a LoRA factor span 5-80x, `benchmarks/fourier_gap.py`).
A wavelet coefficient touches a few neighbouring channels, so Adam on wavelet coefficients stays
close to that. A Fourier (Hartley) coefficient touches every channel, so Adam's per-coefficient
normalisation follows the few loud channels: 10-30 % of its first step lands on the 5 % of
channels with the largest gradient (5 % for LoRA, 6-7 % for wavelets). This optimiser gives a
spectral factor LoRA's step instead, restricted to the factor's function space:

    G   = dLoss / d(decoded matrix)            (the bank's backward hands it over)
    m,v = Adam's moments of G, per matrix entry (LoRA-sized state)
    D   = m_hat / (sqrt(v_hat) + eps)          (LoRA's AdamW direction for this matrix)
    c  <- c - lr * S^T D                        (S: the decode; S^T: `spectral.adjoint`)

For an orthonormal basis (Haar, db-N up to its boundary, Hartley) the matrix then moves by
-lr * (D projected onto the span of Omega's basis functions): the nearest step to LoRA's that the
adapter can take. With eta = 0 and an orthonormal basis the trajectory *is* LoRA's (tested).
Weight decay is decoupled on the stored coefficients; other trainable parameters (SeDoRA's
magnitudes, dense factors) take plain AdamW. The stored numbers, the checkpoint format and
serving do not change: this is a training choice (`selora-train --optimizer projected-adamw`).

Gradient clipping scales `.grad`; the matrix gradients are scaled by the same factor through
`set_grad_scale` (the trainer calls it with clip_grad_norm_'s coefficient).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .bank import FactorBank


class ProjectedAdamW(torch.optim.AdamW):
    """AdamW for every parameter except the thetas of `banks`, which step as described above.

    State per bank (B matrices of shape (m, n)): "matrix_exp_avg" and "matrix_exp_avg_sq" (B, m, n)
    and "step", held in the state of the bank's first theta (one tensor each per bank in a saved
    optimizer state).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], banks: Sequence[FactorBank], **kwargs):
        super().__init__(params, **kwargs)
        self.banks = list(banks)
        for bank in self.banks:
            bank.keep_matrix_grad = True
        self._banked = {id(f.theta) for bank in self.banks for f in bank.factors}
        self._grad_scale = 1.0

    def set_grad_scale(self, scale: float) -> None:
        """Scale the next step's matrix gradients (gradient clipping's coefficient)."""
        self._grad_scale = float(scale)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for bank in self.banks:
            bank.matrix_grad = None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("ProjectedAdamW does not take a closure")
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for bank in self.banks:
            self._step_bank(bank, lr, beta1, beta2, eps, decay)
        # the rest: plain AdamW, with the banked thetas hidden from it
        hidden = []
        for g in self.param_groups:
            for p in g["params"]:
                if id(p) in self._banked and p.grad is not None:
                    hidden.append((p, p.grad))
                    p.grad = None
        try:
            super().step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        self._grad_scale = 1.0

    def _step_bank(self, bank: FactorBank, lr: float, beta1: float, beta2: float, eps: float, decay: float) -> None:
        grad = bank.take_matrix_grad()
        if grad is None:
            return
        if self._grad_scale != 1.0:
            grad.mul_(self._grad_scale)
        state = self.state[bank.factors[0].theta]
        if "matrix_exp_avg" not in state:
            # "step" as a tensor, as torch's Adam(W) state has it (its load_state_dict expects one)
            state["step"] = torch.tensor(0.0)
            state["matrix_exp_avg"] = torch.zeros_like(grad)
            state["matrix_exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        t = int(state["step"].item())
        m, v = state["matrix_exp_avg"], state["matrix_exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
        direction = (m / (1 - beta1**t)).div_(denom)
        step = bank.transpose(direction)  # (B, k): the coefficients' share of the matrix step
        thetas = [f.theta for f in bank.factors]
        if decay:
            torch._foreach_mul_(thetas, 1 - lr * decay)
        torch._foreach_add_(thetas, list(step.to(thetas[0].dtype).unbind(0)), alpha=-lr / bank.gain)
