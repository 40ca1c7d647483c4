"""The trainable layer: a frozen nn.Linear plus a low-rank update whose factors are learned.

    y = base(x) + scaling * B (A dropout(x))                                 (LoRA, SeLoRA)
    y = base(x) + (m / n - 1) * W0 x' + (m / n) * scaling * B (A x')         (DoRA, SeDoRA)
        with n = ||W0 + scaling * B A|| per output row, detached from the graph,
        x' = dropout(x) in training with dropout > 0, and W0 x' = base(x) - bias otherwise

The DoRA line is PEFT's `DoraLinearLayer.forward` term for term (including the detached norm,
section 4.3 of the DoRA paper), so a trained layer gives PEFT's logits once exported, and
`merge.merged_weight` (m * (W0 + dW) / ||W0 + dW||) in eval mode.

A and B come from a *factor*: a module whose forward returns the dense matrix. LoRA and SeLoRA
share every line of the layer and differ only in the factor:

    DenseFactor(weight)          returns its (m, n) parameter (plain LoRA, the baseline)
    SpectralFactor(coef, layout) returns the materialised (m, n) matrix of its k coefficients,
                                 recomputed at every forward so gradients reach only them
                                 (trained in an orthonormal scale: `coefficient_gain`):
                                 `decode.decode` when a gradient is wanted (the serving fast
                                 path is not differentiable), `materialise` otherwise; after
                                 `inject`, through its layout's `bank.FactorBank` (one
                                 batched decode per forward pass for all factors of a layout)

Factors compute in float32 (the inverse transforms want it) and are cast to the input's dtype.
This module is pure tensor math: it knows nothing of files, data or the optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SeLoRAConfig
from ..spectral.materialise import MatrixLayout, materialise
from .decode import decode

TRAIN_VARIANTS = ("selora", "sedora", "lora")


@dataclass(frozen=True)
class AdapterSpec:
    """What to train: the SeLoRA config (layout, rank, alpha, targets, seed), or dense LoRA.

    `dense=True` is the plain LoRA baseline: it uses r, alpha, seed and target_modules of
    `config` and ignores basis, wavelet and eta (there is no spectrum).
    """

    config: SeLoRAConfig
    dense: bool = False
    dropout: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.config, SeLoRAConfig):
            raise TypeError(f"config must be a SeLoRAConfig, got {type(self.config).__name__}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.dense and self.config.variant != "selora":
            raise ValueError("dense LoRA has no magnitude vector: use variant 'sedora' only with a spectral basis")
        object.__setattr__(self, "dropout", float(self.dropout))

    @classmethod
    def for_variant(cls, variant: str, config: SeLoRAConfig, dropout: float = 0.05) -> "AdapterSpec":
        """`variant` as the CLI spells it: selora, sedora or lora."""
        if variant not in TRAIN_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(TRAIN_VARIANTS)}, got {variant!r}")
        config = replace(config, variant="sedora" if variant == "sedora" else "selora")
        return cls(config, dense=variant == "lora", dropout=dropout)

    @property
    def variant(self) -> str:
        return "lora" if self.dense else self.config.variant

    @property
    def label(self) -> str:
        """Human name, e.g. 'SeLoRA-W (haar)', 'SeLoRA-F', 'SeDoRA-W (db4)', 'LoRA'."""
        if self.dense:
            return "LoRA"
        c = self.config
        name = "SeDoRA" if c.variant == "sedora" else "SeLoRA"
        if c.basis == "fourier-real":
            return f"{name}-F (Re(ifft2), format v1)"
        return f"{name}-F" if c.basis == "fourier" else f"{name}-W ({c.wavelet})"

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "dense": self.dense, "dropout": self.dropout}

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterSpec":
        return cls(SeLoRAConfig.from_dict(data["config"]), bool(data["dense"]), data["dropout"])


class DenseFactor(nn.Module):
    """A dense (m, n) factor: LoRA's lora_A or lora_B."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone())

    def forward(self) -> torch.Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


def coefficient_gain(layout: MatrixLayout) -> float:
    """The factor between a SpectralFactor's trainable parameter and its stored coefficients.

    Adam moves every parameter by about `lr` per step whatever its gradient's scale, so what a
    step does to A or B depends on how strongly one coefficient moves the matrix. Orthonormal
    bases (the wavelets, and `fourier`'s Hartley basis) move it by O(1) (Haar: +-1/2 on a 2x2
    block): gain 1. Format v1's `fourier-real` uses torch's default ("backward") ifft2, which
    divides by M*N, so its A and B would learn ~sqrt(M*N) times slower (about 90x for a 256 x 32
    matrix); training its coefficients divided by sqrt(M*N) (the "ortho" scale) gives it LoRA-like
    step sizes. The function space, the initial matrices and the stored coefficients are
    unchanged: this only preconditions the optimiser.
    """
    if layout.basis.name == "fourier-real":
        rows, cols = layout.spectral_shape
        return float(rows * cols) ** 0.5
    return 1.0


class SpectralFactor(nn.Module):
    """An (m, n) factor decoded from k learnable spectral coefficients on Omega.

    The trainable parameter is `theta` = coefficients / `coefficient_gain(layout)`.
    """

    def __init__(self, coef: torch.Tensor, layout: MatrixLayout):
        super().__init__()
        if coef.shape != (layout.k,):
            raise ValueError(f"expected ({layout.k},) coefficients for layout {layout.shape}, got {tuple(coef.shape)}")
        self.layout = layout
        self.gain = coefficient_gain(layout)
        self.theta = nn.Parameter(coef.detach().float().clone() / self.gain)
        self.bank = None  # a bank.FactorBank decodes this factor with the others of its layout
        self.index = -1

    def attach(self, bank, index: int) -> None:
        """Decode through `bank` (row `index`) when a gradient is wanted."""
        self.bank, self.index = bank, index

    def coefficients(self) -> torch.Tensor:
        """The (k,) spectral coefficients, as the checkpoint format stores them."""
        return self.theta * self.gain if self.gain != 1.0 else self.theta

    def forward(self) -> torch.Tensor:
        if torch.is_grad_enabled() and self.theta.requires_grad:
            if self.bank is not None:
                return self.bank.row(self.index)
            return decode(self.coefficients(), self.layout)  # the fast path is not differentiable
        return materialise(self.coefficients(), self.layout)

    def extra_repr(self) -> str:
        return f"shape={self.layout.shape}, k={self.layout.k}, basis={self.layout.basis.label}, gain={self.gain:g}"


class AdaptedLinear(nn.Module):
    """`base` (frozen) plus the update of factors A (r, in) and B (out, r), LoRA- or DoRA-style."""

    def __init__(
        self,
        base: nn.Linear,
        lora_A: nn.Module,
        lora_B: nn.Module,
        *,
        scaling: float,
        dropout: float = 0.0,
        magnitude: torch.Tensor | None = None,
    ):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = lora_A
        self.lora_B = lora_B
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.magnitude = None if magnitude is None else nn.Parameter(magnitude.detach().float().clone())
        if self.magnitude is not None and self.magnitude.shape != (base.out_features,):
            raise ValueError(f"magnitude must be ({base.out_features},), got {tuple(self.magnitude.shape)}")

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def factors(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r, in), B (out, r)) as dense matrices, differentiable w.r.t. the factors."""
        a, b = self.lora_A(), self.lora_B()
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A (out, in) in float32."""
        a, b = self.factors()
        return self.scaling * (b @ a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        a, b = self.factors(x.dtype)
        dropped = self.dropout(x)
        update = F.linear(F.linear(dropped, a), b)
        if self.magnitude is None:
            return result + self.scaling * update
        w0 = self.base.weight
        # The norm is a constant for the gradient (DoRA, section 4.3), as in PEFT; computed in
        # float32 so a bf16 base does not lose the small update.
        norm = torch.linalg.norm(w0.float() + self.scaling * (b.float() @ a.float()).detach(), dim=1).detach()
        scale = (self.magnitude / norm).to(x.dtype)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base_out = result if self.base.bias is None else result - self.base.bias
        else:
            base_out = F.linear(dropped, w0)
        return result + (scale - 1) * base_out + scale * self.scaling * update

    def extra_repr(self) -> str:
        dora = ", dora" if self.magnitude is not None else ""
        return f"in={self.in_features}, out={self.out_features}, scaling={self.scaling:g}{dora}"
