"""The optimisation loop: AdamW, cosine schedule with warm-up, gradient accumulation, resume.

    fit(model, examples, config, pad_id=..., work_dir=..., resume=...) -> FitResult

Trains whatever parameters of `model` require grad (after `inject.inject`, the adapter's
factors and magnitudes; the benchmark also pre-trains a whole model with it). As in the SeLoRA
paper's appendix C: AdamW, a cosine schedule after a linear warm-up (transformers'
`get_cosine_schedule_with_warmup`), no weight decay by default. `optimizer="projected-adamw"`
keeps Adam's moments per entry of the decoded matrices instead (`projected.py`).

Data order is a pure function of (seed, epoch): each epoch is a seeded permutation cut into
micro-batches of `batch_size`; `grad_accum` micro-batches make one optimiser step (the last
step of an epoch may have fewer). The loss of a step is the mean over all its response tokens,
whatever the padding or the split into micro-batches.

With a `work_dir`, an intermediate checkpoint (`checkpoints.save_step`) is written every
`save_every` steps and at the end of every epoch; `resume=True` continues from the newest one
with the same data order, optimiser, schedule and RNG state, so an interrupted run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import checkpoints
from .bank import banks_of
from .data import Example, collate
from .projected import ProjectedAdamW


OPTIMIZERS = ("adamw", "projected-adamw")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_len: int = 512
    warmup: float = 0.03  # < 1: a fraction of all steps; >= 1: a number of steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    optimizer: str = "adamw"  # or "projected-adamw" (spectral factors; `projected.py`)
    seed: int = 0
    save_every: int = 0  # steps between intermediate checkpoints (0: at epoch ends only)
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, ok: Callable[[float], bool], what: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"{name} must be {what}, got {value!r}")

        for name in ("epochs", "batch_size", "grad_accum", "keep_checkpoints"):
            positive_int(name)
        positive_int("max_len", 2)
        positive_int("save_every", 0)
        positive_int("seed", 0)
        number("lr", lambda v: 0 < v < 1, "a learning rate in (0, 1)")
        number("warmup", lambda v: v >= 0 and (v < 1 or float(v).is_integer()), "a fraction in [0, 1) or a whole number of steps")
        number("weight_decay", lambda v: v >= 0, ">= 0")
        number("max_grad_norm", lambda v: v >= 0, ">= 0 (0 disables clipping)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")

    def warmup_steps(self, total_steps: int) -> int:
        if self.warmup >= 1:
            return min(int(self.warmup), total_steps)
        return int(round(self.warmup * total_steps))

    def resume_key(self) -> dict:
        """The fields a resumed run must share with the run that wrote the checkpoint."""
        d = asdict(self)
        for harmless in ("save_every", "keep_checkpoints"):
            d.pop(harmless)
        if d["optimizer"] == "adamw":  # as runs written before the choice existed recorded it
            d.pop("optimizer")
        return d


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch: a seeded permutation, cut."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]


def steps_per_epoch(num_examples: int, config: TrainConfig) -> int:
    return math.ceil(math.ceil(num_examples / config.batch_size) / config.grad_accum)


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)  # mean response-token loss of every step
    steps: int = 0
    total_steps: int = 0
    resumed_from: int = 0  # the step the run continued from (0: a fresh start)
    seconds: float = 0.0  # wall time of this process's steps
    tokens: int = 0  # tokens (padding excluded) this process trained on
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step
    step_cpu_seconds: list[float] = field(default_factory=list)  # CPU time (all threads) of each step

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class StepLog:
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    tokens_per_second: float


def make_optimizer(model: nn.Module, params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or ProjectedAdamW over `model`'s factor banks (ValueError if it has none)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    banks = banks_of(model)
    if not banks:
        raise ValueError("optimizer 'projected-adamw' steps spectral factors decoded in banks; this model has none "
                         "(dense LoRA trains with 'adamw')")
    return ProjectedAdamW(params, banks, lr=config.lr, weight_decay=config.weight_decay)


def _split_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder body, output layer) of a plain transformers causal LM, or None when its logits
    are more than the output layer applied to the body's last hidden state (soft-capping,
    logit scales), or the parts cannot be found."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Linear) or body is model:
        return None
    return body, head


def _token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions (float32 logits).

    Only the labelled positions go through the output layer: with a 49k-token vocabulary it is
    most of a small model's step, and the loss is on the response only. Models whose logits are
    not just that layer take the full forward pass (same value, tested equal)."""
    labels = batch["labels"][:, 1:]
    parts = _split_head(model)
    if parts is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        shift_logits = logits[:, :-1].float()
        return nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
    body, head = parts
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)[0]
    keep = labels != -100
    logits = head(hidden[:, :-1][keep]).float()
    return nn.functional.cross_entropy(logits, labels[keep], reduction="sum")


def fit(
    model: nn.Module,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    pad_id: int,
    work_dir: str | Path | None = None,
    resume: bool = False,
    run_info: dict | None = None,
    progress: bool = True,
    on_step: Callable[[StepLog], None] | None = None,
) -> FitResult:
    """Train `model`'s trainable parameters on `examples`; see the module docstring.

    `run_info` (JSON-able) is stored in every checkpoint and must match on resume, so a run is
    never continued with a different adapter, model or data set. `on_step` is called after each
    step (and after its checkpoint, if any); raising from it stops the run there.
    """
    from transformers import get_cosine_schedule_with_warmup

    if not examples:
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (inject an adapter first)")
    device = params[0].device
    per_epoch = steps_per_epoch(len(examples), config)
    total = per_epoch * config.epochs
    optimizer = make_optimizer(model, params, config)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps(total), total)
    run = {"train": config.resume_key(), "num_examples": len(examples), **(run_info or {})}

    result = FitResult(total_steps=total)
    torch.manual_seed(config.seed)  # dropout draws from the global generator
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        latest = checkpoints.latest(work)
        if latest is not None and not resume:
            raise FileExistsError(
                f"{work}: holds checkpoints of an earlier run (newest {latest.name}); "
                "pass --resume to continue it or --overwrite to start again"
            )
        if latest is not None:
            state = checkpoints.load_step(latest, model, optimizer, scheduler, run)
            result.resumed_from = result.steps = state["step"]
            result.losses = list(state["losses"])

    model.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=result.steps, unit="step", desc="training", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        while result.steps < total:
            epoch, within = divmod(result.steps, per_epoch)
            batches = epoch_batches(len(examples), config.batch_size, config.seed, epoch)
            groups = [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
            for group in groups[within:]:
                t0, c0 = time.perf_counter(), time.process_time()
                micro = [collate((examples[i] for i in idx), pad_id) for idx in group]
                n_loss = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
                total_loss = 0.0
                for batch in micro:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = _token_loss_sum(model, batch) / n_loss
                    loss.backward()
                    total_loss += loss.item()
                    result.tokens += int(batch["attention_mask"].sum())
                if config.max_grad_norm > 0:
                    norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                    if isinstance(optimizer, ProjectedAdamW):  # its matrix gradients are clipped alike
                        optimizer.set_grad_scale(min(1.0, config.max_grad_norm / (norm + 1e-6)))
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                result.losses.append(total_loss)
                result.step_seconds.append(time.perf_counter() - t0)
                result.step_cpu_seconds.append(time.process_time() - c0)
                result.seconds = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss:.4f}", tok_s=f"{result.tokens_per_second:,.0f}")
                end_of_epoch = result.steps % per_epoch == 0
                if work is not None and (end_of_epoch or (config.save_every and result.steps % config.save_every == 0)):
                    checkpoints.save_step(work, result.steps, model, optimizer, scheduler, run, result.losses)
                    checkpoints.prune(work, config.keep_checkpoints)
                if on_step is not None:
                    on_step(StepLog(result.steps, total, epoch, total_loss, lr, result.tokens_per_second))
    finally:
        bar.close()
        model.eval()
    return result
