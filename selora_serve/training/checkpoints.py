"""Intermediate training checkpoints, for resuming: `WORK/step-N/`, each written atomically.

    step-N/trainable.safetensors  every parameter that requires grad, by its name in the model
                                  (spectral coefficients, dense factors, magnitudes)
    step-N/optimizer.pt           AdamW and scheduler state dicts, torch (and CUDA) RNG states
    step-N/state.json             {"step", "losses", "run"}: "run" describes the run (adapter
                                  spec, training config, base model, data) and must match to resume

These are the trainer's private working files, not an interchange format: the result of a run
is the compact checkpoint (checkpoint/format.py) or a PEFT directory. `optimizer.pt` is read
with `torch.load(weights_only=True)`: tensors and plain containers only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_directory

PREFIX = "step-"
PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


def work_dir_for(out: str | Path) -> Path:
    """Where a run writing `out` keeps its intermediate checkpoints: the sibling `OUT.train`."""
    out = Path(out)
    return out.with_name(out.name + ".train")


def _step_of(path: Path) -> int | None:
    if not path.is_dir() or not path.name.startswith(PREFIX):
        return None
    tail = path.name[len(PREFIX):]
    return int(tail) if tail.isdigit() else None


def list_steps(work: str | Path) -> list[Path]:
    """Complete checkpoints in `work`, oldest first (atomic writes leave no partial ones)."""
    work = Path(work)
    if not work.is_dir():
        return []
    found = [(step, p) for p in work.iterdir() if (step := _step_of(p)) is not None and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest(work: str | Path) -> Path | None:
    steps = list_steps(work)
    return steps[-1] if steps else None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_step(
    work: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    run: dict,
    losses: list[float],
) -> Path:
    from safetensors.torch import save_file

    params = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    target = Path(work) / f"{PREFIX}{step}"
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(params, str(tmp / PARAMS_FILE))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
            tmp / OPTIMIZER_FILE,
        )
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "losses": losses, "run": run}, indent=2) + "\n")
    return target


def _differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        out = []
        for key in sorted(set(expected) | set(found)):
            out += _differences(expected.get(key), found.get(key), f"{prefix}{key}.")
        return out
    return [] if expected == found else [f"{prefix[:-1]}: checkpoint has {found!r}, this run {expected!r}"]


def load_step(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, run: dict
) -> dict:
    """Restore parameters, optimiser, scheduler and RNG from `path`; returns its state.json."""
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    # A JSON round trip turns tuples into lists: compare like with like.
    diffs = _differences(json.loads(json.dumps(run)), state["run"])
    if diffs:
        raise ValueError(
            f"{path}: cannot resume: this run differs from the one that wrote the checkpoint "
            f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}); use --overwrite to start again"
        )
    params = dict((name, p) for name, p in model.named_parameters() if p.requires_grad)
    saved = load_file(str(path / PARAMS_FILE))
    if set(saved) != set(params):
        raise ValueError(f"{path / PARAMS_FILE}: holds other parameters than the model trains")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device))
    blob = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return state


def prune(work: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    import shutil

    for old in list_steps(work)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
