"""Adapter quality on a real pretrained model: SeLoRA-W (haar, db4), SeLoRA-F and LoRA, two tasks.

The experiment the paper's claim rests on ("SeLoRA-W beats LoRA with 40 % of its parameters"),
at a size this machine can run, with the power to tell +2 points from noise:

- Base: SmolLM2-135M-Instruct (`python -m selora_serve.models smollm2`; hidden 576, 30 layers).
- Tasks (`quality_tasks.py`): three-digit addition (1,200 training examples, 150 steps) and JSON
  extraction of a person's name, age and city with held-out names and cities (320 examples, 40
  steps). The base model scores 0 % on both.
- Methods, all on q, k, v, up, down with alpha = 2 r (the paper's r = 32, alpha = 64), dropout 0.05:
  selora-w-haar, selora-w-db4, selora-f (eta 0.6, r 32), selora-f-proj (SeLoRA-F trained with
  `--optimizer projected-adamw`: Adam's moments per matrix entry, the step projected onto the
  coefficients), lora-r32, lora-matched (the rank whose parameter count is nearest SeLoRA's: 13);
  and, on addition, SeLoRA-W's eta / rank trade at the same budget (r (1 - eta) = 12.8):
  selora-w-haar-r16 (eta 0.2) and selora-w-haar-r64 (eta 0.8), and the ablation of SeLoRA-F's
  gap (A's initial scale x0.25 and x4; the projected optimiser on haar).
- Protocol, per task: every method at every rate of the sweep on seed 0 (a x2 ladder around the
  paper's 2e-4 .. 6e-4); a method whose lowest validation loss sits at the edge of the rates it
  tried gets the next rung (up to `max_extend` more per side), so every chosen rate is bracketed
  unless the ladder ran out (said in the table); then seeds 1 .. n-1 at the chosen rate; the
  budget points at haar's rate. Seeds change Omega, the initial values and the data order, not
  the data. Each run is a fresh process, so its peak memory is its own.
- Scores on the test split: exact answers (teacher-forced argmax equals the answer at every answer
  position, end of turn included) and the mean loss per answer token; mean and 95 % confidence
  interval (Student t) over seeds; differences between methods paired by seed (same data order),
  with their own 95 % CI and a verdict: beats (CI above 0), loses (below), ties (CI spans 0).
  Step time: median wall and CPU seconds per optimiser step, after the first two.

Resumable: every finished run is appended to `--results` (JSONL, default next to `--json`); a
rerun with the same sizes reuses those records and runs only what is missing, so the default run
(about 3 hours on 2 CPU cores: 116 runs of 85-100 s) can span sessions. `--json` is rewritten after every run
("complete": false until the end). `--plot PATH` draws each method's test accuracy per task (every seed, mean ± CI).
`--quick` is the suite's smoke run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

try:  # as a module (tests) or as a script
    from benchmarks import quality_tasks as tasks
    from benchmarks.publish import provenance, publish, utc_now
    from benchmarks.quality_report import plot, print_table
    from benchmarks.quality_stats import base_method, compare, parse_method, summarise
except ImportError:
    import quality_tasks as tasks
    from publish import provenance, publish, utc_now
    from quality_report import plot, print_table
    from quality_stats import base_method, compare, parse_method, summarise
from selora_serve.atomic import write_json
from selora_serve.config import SeLoRAConfig
from selora_serve.spectral.omega import num_coefficients
from selora_serve.training.data import Example
from selora_serve.training.layers import AdapterSpec

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
METHODS = ("selora-w-haar", "selora-w-db4", "selora-f", "selora-f-proj", "lora-r32", "lora-matched")
# SeLoRA-W at the same trainable budget as r 32, eta 0.6 (r (1 - eta) = 12.8), at haar's rate.
BUDGET_POINTS = ("selora-w-haar-r16", "selora-w-haar-r64")
ABLATION = ("selora-f-init0.25", "selora-f-init4", "selora-w-haar-proj")
# The rates a sweep may visit: a x2 ladder; the default sweep starts on the middle four.
LADDER = (5e-5, 1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3, 6.4e-3, 1.28e-2, 2.56e-2)


@dataclass(frozen=True)
class Sizes:
    tasks: tuple[str, ...] = tasks.TASKS
    train: int = 1200  # addition examples (one epoch)
    extraction_train: int = 320  # extraction examples: ~3x longer sequences, 40 steps
    validation: int = 128
    test: int = 256
    epochs: int = 1
    batch: int = 8
    warmup: int = 8  # steps
    rank: int = 32
    eta: float = 0.6
    dropout: float = 0.05
    lrs: tuple[float, ...] = (4e-4, 8e-4, 1.6e-3, 3.2e-3)
    max_extend: int = 2  # extra ladder rungs per side when a method's best rate is at an edge
    seeds: int = 5
    methods: tuple[str, ...] = METHODS
    budget_points: tuple[str, ...] = BUDGET_POINTS
    # SeLoRA-F's gap (addition only): A's initial scale x0.25 and x4 at F's chosen rate (the
    # rate itself is the sweep's ablation), and the projected optimiser on haar at haar's rate
    ablation: tuple[str, ...] = ABLATION
    ablation_seeds: int = 2
    digits: int = 3  # of each addend

    def train_examples(self, task: str) -> int:
        return self.extraction_train if task == "extraction" else self.train

    def key(self, task: str) -> str:
        """What a stored record of `task` must share with this run to be reused: the sizes that
        shape its training and scores (not the seeds, rates or methods run, nor the other task's)."""
        d = asdict(self)
        for free in ("tasks", "lrs", "max_extend", "seeds", "methods", "budget_points", "ablation", "ablation_seeds",
                     "train", "extraction_train"):
            d.pop(free)
        if task != "addition":
            d.pop("digits")
        return json.dumps({"task": task, "train": self.train_examples(task), **d}, sort_keys=True)


QUICK = Sizes(train=24, extraction_train=24, validation=8, test=8, batch=4, warmup=1, lrs=(6e-4,), max_extend=0,
              seeds=1, methods=("selora-w-haar", "lora-r32"), budget_points=(), ablation=())


# --- methods -------------------------------------------------------------------------------------

def matched_rank(sizes: Sizes, shapes: list[tuple[int, int]]) -> int:
    """The LoRA rank whose trainable parameter count is nearest SeLoRA's at (rank, eta)."""
    selora = sum(num_coefficients(sizes.eta, (sizes.rank, i)) + num_coefficients(sizes.eta, (o, sizes.rank))
                 for i, o in shapes)
    per_rank = sum(i + o for i, o in shapes)
    return min(range(1, sizes.rank + 1), key=lambda q: abs(q * per_rank - selora))


def rank_eta(method: str, sizes: Sizes) -> tuple[int, float]:
    """(r, eta) of a method; a budget point "...-r<R>" keeps r (1 - eta) at the default's."""
    rank = parse_method(method)[1]
    if rank is not None:
        return rank, round(1.0 - sizes.rank * (1.0 - sizes.eta) / rank, 6)
    return sizes.rank, sizes.eta


def spec_for(method: str, sizes: Sizes, shapes: list[tuple[int, int]], seed: int) -> AdapterSpec:
    r, eta = rank_eta(method, sizes)
    if method == "lora-matched":
        r = matched_rank(sizes, shapes)
    kind = {"selora-w-haar": dict(basis="wavelet", wavelet="haar"), "selora-w-db4": dict(basis="wavelet", wavelet="db4"),
            "selora-f": dict(basis="fourier")}.get(parse_method(method)[0], {})
    config = SeLoRAConfig(r=r, alpha=2.0 * r, eta=eta, seed=seed, target_modules=TARGETS, **kind)
    return AdapterSpec(config, dense=method.startswith("lora"), dropout=sizes.dropout)


def scale_initial_a(model, factor: float) -> None:
    """Multiply every A factor's initial values by `factor` (the init-scale ablation; B stays 0,
    so the adapted model still starts at the base model)."""
    from selora_serve.training.inject import adapted_layers

    with torch.no_grad():
        for layer in adapted_layers(model).values():
            for p in layer.lora_A.parameters():
                p.mul_(factor)


def target_shapes_of(model) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS]


# --- one run (in its own process) ----------------------------------------------------------------

def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def quantised_scores(model, examples: list[Example], pad_id: int, bits: tuple[int, ...]) -> dict[int, dict]:
    """{bits: test scores} of the trained spectral adapter in `model` with its coefficients
    quantised as a format version 3 checkpoint stores them (per factor, default group size) and
    dequantised; the trained coefficients are restored afterwards."""
    from selora_serve.checkpoint.quant import QuantSpec, dequantize, quantize
    from selora_serve.training.layers import SpectralFactor

    factors = [m for m in model.modules() if isinstance(m, SpectralFactor)]
    trained = [f.theta.detach().clone() for f in factors]
    out = {}
    try:
        for b in bits:
            spec = QuantSpec(b)
            with torch.no_grad():
                for f in factors:
                    coef = f.coefficients().detach()
                    deq = dequantize(*quantize(coef, spec), coef.numel(), spec)
                    f.theta.copy_((deq / f.gain).to(f.theta))
            loss, acc = tasks.evaluate(model, examples, pad_id)
            out[b] = {"heldout_accuracy": acc, "heldout_loss": loss}
    finally:
        with torch.no_grad():
            for f, theta in zip(factors, trained):
                f.theta.copy_(theta)
    return out


def update_shape(model) -> dict:
    """Diagnostics of the trained update dW = scaling B A, means over the adapted modules: its
    Frobenius norm per entry (rms) and its largest entry over that rms (peakiness: how much of
    the update sits in a few weights, which an orthonormal basis leaves to the optimiser)."""
    from selora_serve.training.inject import adapted_layers

    rms, peak = [], []
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            dw = layer.delta_weight()
            r = dw.pow(2).mean().sqrt().item()
            rms.append(r)
            peak.append(dw.abs().max().item() / r if r > 0 else 0.0)
    return {"update_rms": statistics.mean(rms), "update_peak_over_rms": statistics.mean(peak)}


def run_one(model_dir: str, sizes: Sizes, method: str, seed: int, lr: float, device: str, threads: int,
            quant_bits: tuple[int, ...] = (), task: str = "addition") -> dict:
    """Train one adapter on `task` and score it; returns its record (with `quantised` scores per
    bits of `quant_bits`, for spectral methods)."""
    from selora_serve.training.data import pad_token_id
    from selora_serve.training.inject import inject, trainable_parameters
    from selora_serve.training.job import load_model, load_tokenizer
    from selora_serve.training.trainer import TrainConfig, fit

    torch.set_num_threads(threads)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device=device)
    rss_loaded = _rss_kib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    parts = tasks.split(task, sizes.train_examples(task), sizes.validation, sizes.test, sizes.digits)
    data = {k: tasks.encode(v, tokenizer, k) for k, v in parts.items()}
    pad = pad_token_id(tokenizer)
    spec = spec_for(method, sizes, target_shapes_of(model), seed)
    inject(model, spec)
    _, _, init_scale, projected = parse_method(method)
    if init_scale != 1.0:
        scale_initial_a(model, init_scale)
    params = sum(p.numel() for p in trainable_parameters(model).values())
    config = TrainConfig(epochs=sizes.epochs, lr=lr, batch_size=sizes.batch, warmup=float(sizes.warmup), seed=seed,
                         max_len=96, optimizer="projected-adamw" if projected else "adamw")
    result = fit(model, data["train"], config, pad_id=pad, progress=False)
    val_loss, val_acc = tasks.evaluate(model, data["validation"], pad)
    test_loss, test_acc = tasks.evaluate(model, data["test"], pad)
    quantised = quantised_scores(model, data["test"], pad, quant_bits) if quant_bits and not spec.dense else {}
    timed = result.step_seconds[2:] or result.step_seconds
    timed_cpu = result.step_cpu_seconds[2:] or result.step_cpu_seconds
    peak = (torch.cuda.max_memory_allocated() // 1024 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {
        "task": task, "method": method, "seed": seed, "lr": lr, "rank": spec.config.r,
        "eta": None if spec.dense else spec.config.eta, "trainable_params": params,
        "heldout_accuracy": test_acc, "heldout_loss": test_loss,
        "validation_accuracy": val_acc, "validation_loss": val_loss,
        "s_per_step": statistics.median(timed), "cpu_s_per_step": statistics.median(timed_cpu),
        "steps": result.steps, "train_loss_first": result.losses[0], "train_loss_last": result.losses[-1],
        **update_shape(model),
        "peak_memory_mib": peak / 1024, "peak_memory_over_model_mib": (peak - (0 if device.startswith("cuda") else rss_loaded)) / 1024,
        "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process peak RSS",
        **({"quantised": quantised} if quantised else {}),
    }


def _in_child(args: tuple) -> dict:
    model_dir, sizes, method, seed, lr, device, threads, task = args
    return run_one(model_dir, sizes, method, seed, lr, device, threads, task=task)


def base_scores(model_dir: str, sizes: Sizes, device: str, threads: int) -> dict:
    """The base model's test scores per task, and its size."""
    from selora_serve.training.data import pad_token_id
    from selora_serve.training.job import load_model, load_tokenizer

    torch.set_num_threads(threads)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device=device)
    scores = {}
    for task in sizes.tasks:
        test = tasks.encode(tasks.split(task, sizes.train_examples(task), sizes.validation, sizes.test, sizes.digits)["test"],
                            tokenizer, "test")
        loss, acc = tasks.evaluate(model, test, pad_token_id(tokenizer))
        scores[task] = {"heldout_accuracy": acc, "heldout_loss": loss}
    return {"scores": scores, "parameters": sum(p.numel() for p in model.parameters()),
            "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers}


# --- the sweep -----------------------------------------------------------------------------------

def chosen_lrs(runs: list[dict], task: str | None = None) -> dict[str, float]:
    """Each method's learning rate: the sweep run (seed 0) with the lowest validation loss."""
    best: dict[str, dict] = {}
    for r in runs:
        if r["phase"] == "sweep" and (task is None or r.get("task", "addition") == task) and (
                r["method"] not in best or r["validation_loss"] < best[r["method"]]["validation_loss"]):
            best[r["method"]] = r
    return {m: r["lr"] for m, r in best.items()}


def next_rung(tried: list[float], best: float, max_extend: int, initial: tuple[float, ...]) -> float | None:
    """The ladder rate to try next when `best` is the lowest or highest rate tried (None: the
    optimum is bracketed, the ladder ended, or `max_extend` rungs were added on that side)."""
    ladder = sorted(set(LADDER) | set(initial))
    low, high = min(tried), max(tried)
    if best == high and sum(1 for t in tried if t > max(initial)) < max_extend:
        above = [r for r in ladder if r > high]
        return above[0] if above else None
    if best == low and sum(1 for t in tried if t < min(initial)) < max_extend:
        below = [r for r in ladder if r < low]
        return below[-1] if below else None
    return None


def load_records(path: Path | None, key: str) -> list[dict]:
    """The stored runs of an earlier (possibly interrupted) run with the same sizes."""
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interruption
            continue
        if record.get("sizes_key") == key:
            out.append(record)
    return out


def run(model_dir: str, sizes: Sizes, device: str, threads: int, json_path: str | None, progress: bool,
        results_path: str | None = None) -> dict:
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    results = Path(results_path) if results_path else None
    stored = [r for task in sizes.tasks for r in load_records(results, sizes.key(task))]
    report = {
        "benchmark": "quality-real", "complete": False,
        "hardware": {"cpu": platform.processor() or platform.machine(), "device": device, "torch_threads": threads,
                     "torch": torch.__version__, "python": platform.python_version()},
        "model": {"dir": model_dir}, "sizes": asdict(sizes),
        "tasks": {"addition": f"{sizes.digits}-digit addition 'a+b=' -> 'c'",
                  "extraction": "sentence -> JSON name/age/city, held-out names and cities"},
        "results_file": str(results) if results else None,
        "runs": [],
    }

    def save() -> None:
        report["seconds"] = time.perf_counter() - started
        report["chosen_lr"] = {t: chosen_lrs(report["runs"], t) for t in sizes.tasks}
        report["summary"] = [row for t in sizes.tasks for row in summarise(report["runs"], t, report["chosen_lr"][t])]
        report["comparisons"] = [row for t in sizes.tasks for row in compare(report["runs"], t, report["chosen_lr"][t])]
        if json_path:
            write_json(json_path, report)

    def one(task: str, method: str, seed: int, lr: float, phase: str) -> None:
        done = next((r for r in stored if (r["task"], r["method"], r["seed"], r["lr"]) == (task, method, seed, lr)), None)
        if done is None:
            with context.Pool(1, maxtasksperchild=1) as pool:  # a fresh process: its peak memory is its own
                done = pool.apply(_in_child, ((model_dir, sizes, method, seed, lr, device, threads, task),))
            done.update(phase=phase, sizes_key=sizes.key(task), finished_utc=utc_now())
            if results:
                results.parent.mkdir(parents=True, exist_ok=True)
                with results.open("a") as fh:
                    fh.write(json.dumps(done) + "\n")
            if progress:
                print(f"  {task:<10} {phase:<6} {method:<18} seed {seed} lr {lr:g}: test acc "
                      f"{done['heldout_accuracy']:.3f} loss {done['heldout_loss']:.3f} (val {done['validation_loss']:.3f}), "
                      f"{done['s_per_step']:.2f} s/step  [{time.perf_counter() - started:.0f} s]", file=sys.stderr)
        report["runs"].append(done)
        save()

    with context.Pool(1, maxtasksperchild=1) as pool:
        base = pool.apply(base_scores, (model_dir, sizes, device, threads))
    report["base"] = base.pop("scores")
    report["model"].update(base)
    for task in sizes.tasks:
        for lr in sizes.lrs:  # methods interleaved within each rate, so drifts in machine load hit all alike
            for method in sizes.methods:
                one(task, method, 0, lr, "sweep")
        while True:  # extend each method's sweep until its best rate is inside the rates it tried
            extra = []
            for method, best in chosen_lrs(report["runs"], task).items():
                tried = sorted({r["lr"] for r in report["runs"]
                                if (r["task"], r["method"], r["phase"]) == (task, method, "sweep")})
                rung = next_rung(tried, best, sizes.max_extend, sizes.lrs)
                if rung is not None:
                    extra.append((method, rung))
            if not extra:
                break
            for method, rung in extra:
                one(task, method, 0, rung, "sweep")
        lrs = chosen_lrs(report["runs"], task)
        for seed in range(1, sizes.seeds):
            for method in sizes.methods:
                one(task, method, seed, lrs[method], "seed")
        if "selora-w-haar" in lrs and task == "addition":
            for seed in range(sizes.seeds):
                for point in sizes.budget_points:
                    one(task, point, seed, lrs["selora-w-haar"], "budget")
        if task == "addition":
            for seed in range(sizes.ablation_seeds):
                for variant in sizes.ablation:
                    if base_method(variant) in lrs:
                        one(task, variant, seed, lrs[base_method(variant)], "ablation")
    report["complete"] = True
    save()
    return report


def default_model_dir() -> str:
    from selora_serve.models import export
    from selora_serve.serve.plan import default_cache

    return str(export("smollm2", default_cache() / "models" / "smollm2", log=lambda m: print(m, file=sys.stderr)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Adapter quality on SmolLM2-135M-Instruct: SeLoRA-W (haar, db4), SeLoRA-F, LoRA r=32 and LoRA "
        "at SeLoRA's parameter count, on addition and JSON extraction, with a bracketing learning-rate sweep, "
        "5 seeds, 95 %% confidence intervals and SeLoRA-W's eta/rank trade at a fixed budget. Prints a table and, "
        "last, one JSON line. Resumable (--results). About 3 hours on 2 CPU cores.",
    )
    parser.add_argument("--model-dir", metavar="DIR", default=None,
                        help="the base model directory (default: SmolLM2-135M-Instruct exported to "
                        "~/.cache/selora-serve/models/smollm2 by `python -m selora_serve.models`)")
    parser.add_argument("--quick", action="store_true", help="smoke run for the test suite (2 methods, a few steps)")
    parser.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(tasks.TASKS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 5)")
    parser.add_argument("--lrs", default=None, help="comma-separated starting rates of the sweep "
                        "(default 4e-4,8e-4,1.6e-3,3.2e-3; extended along a x2 ladder until bracketed)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--no-budget", action="store_true", help="skip SeLoRA-W's eta/rank points at a fixed budget")
    parser.add_argument("--no-ablation", action="store_true", help="skip the init-scale ablation of SeLoRA-F")
    parser.add_argument("--train-examples", type=int, default=None, help="addition training examples (default 1200)")
    parser.add_argument("--digits", type=int, default=None, help="digits of each addend (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the JSON document here (after every run)")
    parser.add_argument("--results", metavar="PATH", default=None,
                        help="JSONL of finished runs, appended to and reused on a rerun (default: --json's path with "
                        ".jsonl; none without --json)")
    parser.add_argument("--plot", metavar="PATH", default=None, help="write a PNG of each method's test accuracy per task (seeds, mean ± 95 %% CI) here")
    parser.add_argument("--progress", action="store_true", help="a line per run on stderr")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    try:
        if args.seeds is not None:
            sizes = replace(sizes, seeds=args.seeds)
        if args.lrs:
            sizes = replace(sizes, lrs=tuple(float(x) for x in args.lrs.split(",")))
        if args.methods:
            sizes = replace(sizes, methods=tuple(args.methods.split(",")))
        if args.tasks:
            sizes = replace(sizes, tasks=tuple(args.tasks.split(",")))
        if args.no_budget:
            sizes = replace(sizes, budget_points=())
        if args.no_ablation:
            sizes = replace(sizes, ablation=())
        if args.train_examples is not None:
            sizes = replace(sizes, train=args.train_examples)
        if args.digits is not None:
            sizes = replace(sizes, digits=args.digits)
    except ValueError as exc:
        parser.error(f"--lrs: expected numbers separated by commas ({exc})")
    for option, given, known in (("--methods", sizes.methods, METHODS), ("--tasks", sizes.tasks, tasks.TASKS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; expected a subset of {', '.join(known)}")
    if sizes.seeds < 1 or sizes.train < sizes.batch or not 1 <= sizes.digits <= 6:
        parser.error("--seeds must be >= 1, --train-examples at least one batch, --digits in 1..6")
    if any(lr <= 0 or lr >= 1 for lr in sizes.lrs):
        parser.error(f"--lrs: every rate must be in (0, 1), got {sizes.lrs}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    results = args.results or (str(Path(args.json).with_suffix(".jsonl")) if args.json else None)
    model_dir = args.model_dir or default_model_dir()
    report = run(model_dir, sizes, args.device, args.threads or os.cpu_count() or 1, args.json, args.progress, results)
    report["quick"] = args.quick
    report["provenance"] = provenance("quality_real.py", argv)
    publish(report, table=print_table, json_path=args.json, plot=plot, plot_path=args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
