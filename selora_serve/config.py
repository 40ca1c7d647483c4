"""SeLoRAConfig: the hyper-parameters that, with the seed, define an adapter's layout.

Validated in `__post_init__`; `from_dict` rejects missing and unknown keys, naming the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .spectral.basis import Basis

VARIANTS = ("selora", "sedora")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class SeLoRAConfig:
    basis: str = "wavelet"
    wavelet: str | None = "haar"
    eta: float = 0.6
    r: int = 32
    alpha: float = 64.0
    seed: int = 0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    variant: str = "selora"

    def __post_init__(self) -> None:
        if self.basis in ("fourier", "fourier-real") and self.wavelet is not None:
            object.__setattr__(self, "wavelet", None)
        try:
            Basis(self.basis, self.wavelet)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta < 1.0:
            raise ConfigError(f"eta must be a number in [0, 1), got {self.eta!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        targets = tuple(self.target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"target_modules must be a non-empty list of names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", targets)
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        object.__setattr__(self, "eta", float(self.eta))
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def spectral_basis(self) -> Basis:
        return Basis(self.basis, self.wavelet)

    @property
    def scaling(self) -> float:
        """LoRA's alpha / r."""
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "SeLoRAConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(names))}")
        missing = sorted(names - set(data))
        if missing:
            raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
