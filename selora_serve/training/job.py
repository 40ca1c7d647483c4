"""One training run, start to finish: what `selora-train` executes.

    train(TrainJob(model=DIR, data=FILE, out=OUT, spec=AdapterSpec(...), train=TrainConfig(...)))

1. refuse early if OUT (or the --export-peft directory) exists without `overwrite`, so no
   training is wasted on an output that cannot be written;
2. load the tokenizer and the data (every record validated before the model is loaded);
3. load the base model (transformers), freeze it and inject the adapter (`inject.inject`);
4. `trainer.fit`, with intermediate checkpoints in the sibling work directory `OUT.train/`
   (`--resume` continues from the newest; `--overwrite` without `--resume` discards them);
5. write the result (`export.write_result`) atomically, and remove `OUT.train/` unless kept.

The checkpoint records the base model as `convert.base_info` describes it: the --model path as
its name, the architecture fingerprint and the parameter count.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..convert import base_info
from .checkpoints import work_dir_for
from .data import FORMATS, load_examples, pad_token_id
from ..checkpoint.quant import QuantSpec
from .export import write_result
from .inject import inject, trainable_parameters
from .layers import AdapterSpec
from .trainer import FitResult, StepLog, TrainConfig, fit

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COEF_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainJob:
    model: str
    data: str
    out: str
    spec: AdapterSpec
    train: TrainConfig = field(default_factory=TrainConfig)
    data_format: str = "auto"
    device: str = "auto"
    dtype: str = "float32"  # the base model's weights; adapter parameters are always float32
    export_peft: str | None = None
    coefficient_dtype: str = "float32"
    coefficient_bits: int | None = None  # quantise the exported coefficients (format version 3)
    overwrite: bool = False
    resume: bool = False
    keep_work_dir: bool = False

    def __post_init__(self) -> None:
        if self.data_format not in FORMATS:
            raise ValueError(f"data format must be one of {', '.join(FORMATS)}, got {self.data_format!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.coefficient_dtype not in COEF_DTYPES:
            raise ValueError(f"coefficient dtype must be one of {', '.join(COEF_DTYPES)}, got {self.coefficient_dtype!r}")
        if self.coefficient_bits is not None:
            if self.spec.dense:
                raise ValueError("--coef-bits quantises spectral coefficients: --variant lora has none")
            QuantSpec(self.coefficient_bits)  # ValueError naming the value
        if self.spec.dense and self.export_peft is not None:
            raise ValueError("--export-peft is for spectral variants: --variant lora already writes a PEFT directory at --out")
        resolve_device(self.device)


@dataclass
class TrainSummary:
    model: nn.Module  # the trained model (eval mode), adapters still injected
    written: list[Path]
    fit: FitResult
    examples: int
    trainable_parameters: int
    base_parameters: int | None
    device: str


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu; anything else must be a device torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def load_model(model_dir: str | Path, *, device: torch.device | str = "cpu", dtype: str = "float32"):
    """The causal LM in a local Hugging Face directory, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=DTYPES[dtype], local_files_only=True)
    return model.to(device).eval()


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def train(
    job: TrainJob, *, progress: bool = True, on_step: Callable[[StepLog], None] | None = None
) -> TrainSummary:
    """Run `job` (see the module docstring); returns what was written and the loss history."""
    for target in (job.out, job.export_peft):
        if target is not None and Path(target).exists() and not job.overwrite:
            raise FileExistsError(f"{target}: already exists (pass --overwrite to replace it)")
    work = work_dir_for(job.out)
    if job.overwrite and not job.resume and work.exists():
        shutil.rmtree(work)
    device = resolve_device(job.device)
    base = base_info(job.model)  # validates the directory before anything heavy is loaded
    tokenizer = load_tokenizer(job.model)
    examples = load_examples(job.data, tokenizer, max_len=job.train.max_len, fmt=job.data_format)
    model = load_model(job.model, device=device, dtype=job.dtype)
    inject(model, job.spec)
    run_info = {
        "adapter": job.spec.to_dict(),
        "base_model": {"name": base.name, "fingerprint": base.fingerprint},
        "data": {"path": str(job.data), "sha256": _file_sha256(job.data), "format": job.data_format},
        "dtype": job.dtype,
    }
    result = fit(
        model, examples, job.train, pad_id=pad_token_id(tokenizer), work_dir=work,
        resume=job.resume, run_info=run_info, progress=progress, on_step=on_step,
    )
    written = write_result(
        model, job.spec, base, job.out, export_peft=job.export_peft,
        coefficient_dtype=job.coefficient_dtype, overwrite=job.overwrite,
        quantization=QuantSpec(job.coefficient_bits) if job.coefficient_bits else None,
    )
    if not job.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return TrainSummary(
        model, written, result, len(examples), sum(p.numel() for p in trainable_parameters(model).values()),
        base.num_parameters, str(device),
    )
