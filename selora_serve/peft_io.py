"""Interchange with PEFT's LoRA format (a directory PEFT and vLLM load unchanged).

    adapter_config.json        peft_type LORA, r, lora_alpha, target_modules, ...
    adapter_model.safetensors  "base_model.model.{module}.lora_A.weight" (r, in)
                               "base_model.model.{module}.lora_B.weight" (out, r)
                               and, for DoRA, "base_model.model.{module}.lora_magnitude_vector"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapter import SpectralAdapter, materialise_adapter
from .packed import PackedAdapter, materialise_packed
from .atomic import atomic_directory

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PeftFormatError(ValueError):
    """A PEFT LoRA directory this project cannot read."""


@dataclass
class DenseLora:
    r: int
    alpha: float
    target_modules: list[str]
    base_model_name: str | None
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in), B (out, r))
    magnitudes: dict[str, torch.Tensor]  # DoRA only


def peft_config_dict(adapter: SpectralAdapter) -> dict:
    c = adapter.config
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.base.name,
        "r": c.r,
        "lora_alpha": c.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(c.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": c.variant == "sedora",
        "modules_to_save": None,
        "inference_mode": True,
    }


def dense_state_dict(
    adapter: SpectralAdapter | PackedAdapter, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """The PEFT-named dense tensors of `adapter` (in memory or as stored, quantised or not), in
    memory: what vLLM receives too."""
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(adapter, PackedAdapter):
        dense = {n: (a.to(device), b.to(device)) for n, (a, b) in materialise_packed(adapter, dtype).items()}
        magnitudes = adapter.magnitudes
    else:
        dense = materialise_adapter(adapter, device=device, dtype=dtype)
        magnitudes = {n: m.magnitude for n, m in adapter.modules.items() if m.magnitude is not None}
    for name, (a, b) in dense.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.contiguous()
        mag = magnitudes.get(name)
        if mag is not None:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = mag.to(device, dtype).contiguous()
    return tensors


def write_peft(
    adapter: SpectralAdapter, out_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Materialise `adapter` and write it atomically as a PEFT LoRA directory."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tensors = dense_state_dict(adapter, dtype=DTYPES[dtype])
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft_config_dict(adapter), indent=2) + "\n")
    return Path(out_dir)


def read_peft(path: str | Path) -> DenseLora:
    """Read a PEFT LoRA directory (safetensors weights), rejecting features SeLoRA lacks."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    cfg_file, w_file = root / PEFT_CONFIG, root / PEFT_WEIGHTS
    if not cfg_file.is_file():
        raise PeftFormatError(f"{cfg_file}: missing: not a PEFT adapter directory")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise PeftFormatError(f"{cfg_file}: not valid JSON ({exc})") from None
    if cfg.get("peft_type") != "LORA":
        raise PeftFormatError(f"{cfg_file}: peft_type: expected 'LORA', got {cfg.get('peft_type')!r}")
    # Each of these changes what B A means or adds weights SeLoRA has no coefficients for.
    unsupported = [
        f"{key}={cfg[key]!r}"
        for key in ("use_rslora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern")
        if cfg.get(key)
    ]
    if unsupported:
        raise PeftFormatError(f"{cfg_file}: unsupported LoRA feature(s): {', '.join(unsupported)}")
    if not w_file.is_file():
        raise PeftFormatError(f"{w_file}: missing (only safetensors PEFT adapters are supported)")
    try:
        state = load_file(str(w_file))
    except SafetensorError as exc:
        raise PeftFormatError(f"{w_file}: corrupt or truncated safetensors ({exc})") from None
    r = int(cfg["r"])
    pairs: dict[str, list] = {}
    magnitudes = {}
    for key, tensor in state.items():
        body = key.removeprefix(PREFIX)
        for suffix, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if body.endswith(suffix):
                pairs.setdefault(body[: -len(suffix)], [None, None])[slot] = tensor
                break
        else:
            if body.endswith(".lora_magnitude_vector"):
                magnitudes[body.removesuffix(".lora_magnitude_vector")] = tensor
            else:
                raise PeftFormatError(f"{w_file}: {key}: unexpected tensor (only lora_A/lora_B supported)")
    weights = {}
    for name, (a, b) in pairs.items():
        if a is None or b is None:
            raise PeftFormatError(f"{w_file}: {name}: has only one of lora_A / lora_B")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise PeftFormatError(f"{w_file}: {name}: shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not match r={r}")
        weights[name] = (a, b)
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        targets = sorted({n.rsplit(".", 1)[-1] for n in weights})
    return DenseLora(r, float(cfg.get("lora_alpha", r)), list(targets), cfg.get("base_model_name_or_path"), weights, magnitudes)
