"""Writing a trained model's adapter: the compact checkpoint, or a dense PEFT LoRA.

    write_result(model, spec, base, out, export_peft=None)
        SeLoRA / SeDoRA  -> `out` is a compact spectral checkpoint (checkpoint.save_checkpoint);
                            with `export_peft`, also a dense PEFT directory there (peft_io.write_peft)
        LoRA (dense)     -> `out` is a PEFT LoRA directory: dense A and B have no spectral form,
                            so the compact format cannot hold them (`export_peft` is refused)

Every write is atomic. The PEFT config of a dense LoRA is the one peft_io writes for a spectral
adapter of the same r, alpha and targets, so both load the same way in PEFT and vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..adapter import BaseModelInfo, SpectralAdapter
from ..atomic import atomic_directory
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import SeLoRAConfig
from ..peft_io import PEFT_CONFIG, PEFT_WEIGHTS, PREFIX, peft_config_dict, write_peft
from .inject import extract_adapter, extract_dense
from .layers import AdapterSpec


def write_dense_peft(
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
    config: SeLoRAConfig,
    base: BaseModelInfo,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """{module: (A (r, in), B (out, r))} -> a PEFT LoRA directory at `out` (float32)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (a, b) in weights.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.float().contiguous()
    # peft_config_dict reads only the config and the base model's name.
    peft_config = peft_config_dict(SpectralAdapter(config, base))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    return Path(out)


def write_result(
    model: nn.Module,
    spec: AdapterSpec,
    base: BaseModelInfo,
    out: str | Path,
    *,
    export_peft: str | Path | None = None,
    coefficient_dtype: str = "float32",
    overwrite: bool = False,
    quantization=None,
) -> list[Path]:
    """Write the adapter trained in `model`; returns the paths written."""
    if spec.dense:
        if export_peft is not None:
            raise ValueError("--export-peft is for spectral variants: --variant lora already writes a PEFT directory at --out")
        return [write_dense_peft(extract_dense(model), spec.config, base, out, overwrite=overwrite)]
    adapter = extract_adapter(model, spec, base)
    written = [save_checkpoint(adapter, out, coefficient_dtype=coefficient_dtype, overwrite=overwrite,
                               quantization=quantization)]
    if export_peft is not None:
        if quantization is not None:  # the twin of what was written: the dequantised adapter
            adapter = load_checkpoint(written[0])
        written.append(write_peft(adapter, export_peft, overwrite=overwrite))
    return written
