"""Adapter quality on a real pretrained model: SeLoRA-W (haar, db4), SeLoRA-F and LoRA, same task.

The experiment the paper's claim rests on ("SeLoRA-W beats LoRA with 40 % of its parameters"),
at a size this machine can run:

- Base: SmolLM2-135M-Instruct (`python -m selora_serve.models smollm2`; hidden 576, 30 layers).
- Task: three-digit addition, "a+b=" -> "c" + end of turn, a, b uniform in 100..999. The base model
  scores 0 % on it (it rambles); one epoch over TRAIN examples teaches a LoRA part of it, so methods
  separate. Generated locally (no data set in the package registries fits: the arithmetic and
  reasoning sets there need a hub to download). Train, validation and test questions are disjoint.
- Methods, all on q, k, v, up, down with alpha = 2 r (the paper's r = 32, alpha = 64), dropout 0.05:
  selora-w-haar, selora-w-db4, selora-f (eta 0.6, r 32), lora-r32, and lora-matched (the rank whose
  parameter count is nearest SeLoRA's: 13).
- Protocol: every method at every learning rate of the sweep on seed 0 (the paper's 2e-4 .. 6e-4,
  and above it, since short runs and spectral parameterisations may want more); each method's rate
  is the one with the lowest validation loss; then the other seeds at that rate. Seeds change
  Omega, the initial values and the data order, not the data. Each run is a fresh process, so its
  peak memory is its own.
- Scores on the test split: exact answers (teacher-forced argmax equals the answer at every answer
  position, end of turn included: exactly "greedy decoding gives the answer") and the mean loss per
  answer token. Step time: median wall and CPU seconds per optimiser step, after the first two.

Prints a table (machine and sizes stated) and, last, one JSON document; `--json PATH` writes it
atomically after every run (with "complete": false until the end), so an interrupted run keeps
what it measured. `--plot PATH` draws accuracy against trainable parameters. `--quick` is the
suite's smoke run (two methods, a few steps). Default run: about 36 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

try:  # as a module (tests) or as a script
    from benchmarks.quality import mean_sd
except ImportError:
    from quality import mean_sd
from selora_serve.atomic import write_json
from selora_serve.config import SeLoRAConfig
from selora_serve.spectral.omega import num_coefficients
from selora_serve.training.data import IGNORE_INDEX, Example, collate
from selora_serve.training.layers import AdapterSpec

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
METHODS = ("selora-w-haar", "selora-w-db4", "selora-f", "lora-r32", "lora-matched")


@dataclass(frozen=True)
class Sizes:
    train: int = 1200
    validation: int = 128
    test: int = 256
    epochs: int = 1
    batch: int = 8
    warmup: int = 8  # steps
    rank: int = 32
    eta: float = 0.6
    dropout: float = 0.05
    lrs: tuple[float, ...] = (2e-4, 6e-4, 2e-3)
    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    digits: int = 3  # of each addend


QUICK = Sizes(train=24, validation=8, test=8, batch=4, warmup=1, lrs=(6e-4,), seeds=1,
              methods=("selora-w-haar", "lora-r32"))


# --- the task ------------------------------------------------------------------------------------

def addition_split(sizes: Sizes, data_seed: int = 1234) -> dict[str, list[tuple[str, str]]]:
    """{"train", "validation", "test"}: disjoint lists of ("a+b=", "c"), a and b of `sizes.digits`
    digits (100..999 for 3)."""
    rng = random.Random(data_seed)
    low, high = 10 ** (sizes.digits - 1), 10 ** sizes.digits - 1
    seen: set[tuple[int, int]] = set()
    pairs = []
    need = sizes.train + sizes.validation + sizes.test
    while len(pairs) < need:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) not in seen:
            seen.add((a, b))
            pairs.append((f"{a}+{b}=", str(a + b)))
    return {"train": pairs[: sizes.train], "validation": pairs[sizes.train : sizes.train + sizes.validation],
            "test": pairs[sizes.train + sizes.validation :]}


def encode(pairs: list[tuple[str, str]], tokenizer, split: str) -> list[Example]:
    """Prompt tokens (no loss) + answer tokens + end of turn (the loss)."""
    eos = tokenizer.eos_token_id
    out = []
    for i, (question, answer) in enumerate(pairs):
        prompt = tokenizer(question, add_special_tokens=False)["input_ids"]
        response = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
        out.append(Example(tuple(prompt + response), (IGNORE_INDEX,) * len(prompt) + tuple(response), f"{split}:{i}"))
    return out


@torch.no_grad()
def evaluate(model, examples: list[Example], pad_id: int, batch: int = 64) -> tuple[float, float]:
    """(mean loss per answer token, exact-answer rate), teacher-forced."""
    from selora_serve.training.trainer import _split_head

    model.eval()
    body, head = _split_head(model)
    device = head.weight.device
    loss_sum, tokens, exact = 0.0, 0, 0
    for i in range(0, len(examples), batch):
        b = {k: v.to(device) for k, v in collate(examples[i : i + batch], pad_id).items()}
        hidden = body(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)[0][:, :-1]
        labels = b["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        logits = head(hidden[keep]).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum").item()
        tokens += int(keep.sum())
        correct = torch.ones_like(labels, dtype=torch.bool)
        correct[keep] = logits.argmax(-1) == labels[keep]
        exact += int(correct.all(dim=1).sum())
    return loss_sum / tokens, exact / len(examples)


# --- methods -------------------------------------------------------------------------------------

def matched_rank(sizes: Sizes, shapes: list[tuple[int, int]]) -> int:
    """The LoRA rank whose trainable parameter count is nearest SeLoRA's at (rank, eta)."""
    selora = sum(num_coefficients(sizes.eta, (sizes.rank, i)) + num_coefficients(sizes.eta, (o, sizes.rank))
                 for i, o in shapes)
    per_rank = sum(i + o for i, o in shapes)
    return min(range(1, sizes.rank + 1), key=lambda q: abs(q * per_rank - selora))


def spec_for(method: str, sizes: Sizes, shapes: list[tuple[int, int]], seed: int) -> AdapterSpec:
    r = matched_rank(sizes, shapes) if method == "lora-matched" else sizes.rank
    kind = {"selora-w-haar": dict(basis="wavelet", wavelet="haar"), "selora-w-db4": dict(basis="wavelet", wavelet="db4"),
            "selora-f": dict(basis="fourier")}.get(method, {})
    config = SeLoRAConfig(r=r, alpha=2.0 * r, eta=sizes.eta, seed=seed, target_modules=TARGETS, **kind)
    return AdapterSpec(config, dense=method.startswith("lora"), dropout=sizes.dropout)


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
            loss, acc = evaluate(model, examples, pad_id)
            out[b] = {"heldout_accuracy": acc, "heldout_loss": loss}
    finally:
        with torch.no_grad():
            for f, theta in zip(factors, trained):
                f.theta.copy_(theta)
    return out


def run_one(model_dir: str, sizes: Sizes, method: str, seed: int, lr: float, device: str, threads: int,
            quant_bits: tuple[int, ...] = ()) -> dict:
    """Train one adapter and score it; returns its record (with `quantised` scores per bits of
    `quant_bits`, for spectral methods)."""
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
    data = {k: encode(v, tokenizer, k) for k, v in addition_split(sizes).items()}
    pad = pad_token_id(tokenizer)
    spec = spec_for(method, sizes, target_shapes_of(model), seed)
    inject(model, spec)
    params = sum(p.numel() for p in trainable_parameters(model).values())
    config = TrainConfig(epochs=sizes.epochs, lr=lr, batch_size=sizes.batch, warmup=float(sizes.warmup), seed=seed,
                         max_len=64)
    result = fit(model, data["train"], config, pad_id=pad, progress=False)
    val_loss, val_acc = evaluate(model, data["validation"], pad)
    test_loss, test_acc = evaluate(model, data["test"], pad)
    quantised = quantised_scores(model, data["test"], pad, quant_bits) if quant_bits and not spec.dense else {}
    timed = result.step_seconds[2:] or result.step_seconds
    timed_cpu = result.step_cpu_seconds[2:] or result.step_cpu_seconds
    peak = (torch.cuda.max_memory_allocated() // 1024 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {
        "method": method, "seed": seed, "lr": lr, "rank": spec.config.r, "trainable_params": params,
        "heldout_accuracy": test_acc, "heldout_loss": test_loss,
        "validation_accuracy": val_acc, "validation_loss": val_loss,
        "s_per_step": statistics.median(timed), "cpu_s_per_step": statistics.median(timed_cpu),
        "steps": result.steps, "train_loss_first": result.losses[0], "train_loss_last": result.losses[-1],
        "peak_memory_mib": peak / 1024, "peak_memory_over_model_mib": (peak - (0 if device.startswith("cuda") else rss_loaded)) / 1024,
        "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process peak RSS",
        **({"quantised": quantised} if quantised else {}),
    }


def _in_child(args: tuple) -> dict:
    return run_one(*args)


def base_scores(model_dir: str, sizes: Sizes, device: str, threads: int) -> dict:
    from selora_serve.training.data import pad_token_id
    from selora_serve.training.job import load_model, load_tokenizer

    torch.set_num_threads(threads)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device=device)
    test = encode(addition_split(sizes)["test"], tokenizer, "test")
    loss, acc = evaluate(model, test, pad_token_id(tokenizer))
    return {"heldout_accuracy": acc, "heldout_loss": loss, "parameters": sum(p.numel() for p in model.parameters()),
            "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers}


# --- the sweep -----------------------------------------------------------------------------------

def chosen_lrs(runs: list[dict]) -> dict[str, float]:
    """Each method's learning rate: the sweep run (seed 0) with the lowest validation loss."""
    best: dict[str, dict] = {}
    for r in runs:
        if r["phase"] == "sweep" and (r["method"] not in best or r["validation_loss"] < best[r["method"]]["validation_loss"]):
            best[r["method"]] = r
    return {m: r["lr"] for m, r in best.items()}


def summarise(runs: list[dict], lrs: dict[str, float]) -> list[dict]:
    """Per method, over its seeds at its chosen learning rate: mean and sd of the scores."""
    lora = [r for r in runs if r["method"] == "lora-r32" and r["lr"] == lrs.get("lora-r32")]
    lora_step = statistics.median(r["s_per_step"] for r in lora) if lora else None
    out = []
    for method, lr in lrs.items():
        rs = [r for r in runs if r["method"] == method and r["lr"] == lr]
        acc, acc_sd = mean_sd([r["heldout_accuracy"] for r in rs])
        loss, loss_sd = mean_sd([r["heldout_loss"] for r in rs])
        step = statistics.median(r["s_per_step"] for r in rs)
        out.append({
            "method": method, "lr": lr, "seeds": len(rs), "trainable_params": rs[0]["trainable_params"],
            "heldout_accuracy_mean": acc, "heldout_accuracy_sd": acc_sd,
            "heldout_loss_mean": loss, "heldout_loss_sd": loss_sd,
            "s_per_step": step, "step_vs_lora_r32": step / lora_step if lora_step else None,
            "peak_memory_mib": max(r["peak_memory_mib"] for r in rs),
        })
    return out


def run(model_dir: str, sizes: Sizes, device: str, threads: int, json_path: str | None, progress: bool) -> dict:
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    report = {
        "benchmark": "quality-real", "complete": False,
        "hardware": {"cpu": platform.processor() or platform.machine(), "device": device, "torch_threads": threads,
                     "torch": torch.__version__, "python": platform.python_version()},
        "model": {"dir": model_dir}, "sizes": asdict(sizes),
        "task": f"{sizes.digits}-digit addition 'a+b=' -> 'c'; disjoint train/validation/test",
        "runs": [],
    }

    def one(method: str, seed: int, lr: float, phase: str) -> None:
        with context.Pool(1, maxtasksperchild=1) as pool:  # a fresh process: its peak memory is its own
            record = pool.apply(_in_child, ((model_dir, sizes, method, seed, lr, device, threads),))
        record["phase"] = phase
        report["runs"].append(record)
        if progress:
            print(f"  {phase:<5} {method:<14} seed {seed} lr {lr:g}: test acc {record['heldout_accuracy']:.3f} "
                  f"loss {record['heldout_loss']:.3f} (val {record['validation_loss']:.3f}), "
                  f"{record['s_per_step']:.2f} s/step  [{time.perf_counter() - started:.0f} s]", file=sys.stderr)
        report["seconds"] = time.perf_counter() - started
        if json_path:
            write_json(json_path, report)

    with context.Pool(1, maxtasksperchild=1) as pool:
        report["base"] = pool.apply(base_scores, (model_dir, sizes, device, threads))
    report["model"].update({k: report["base"].pop(k) for k in ("parameters", "hidden", "layers")})
    for lr in sizes.lrs:  # methods interleaved within each rate, so drifts in machine load hit all alike
        for method in sizes.methods:
            one(method, 0, lr, "sweep")
    lrs = chosen_lrs(report["runs"])
    for seed in range(1, sizes.seeds):
        for method in sizes.methods:
            one(method, seed, lrs[method], "seed")
    report["chosen_lr"] = lrs
    report["summary"] = summarise(report["runs"], lrs)
    report["complete"] = True
    report["seconds"] = time.perf_counter() - started
    return report


def print_table(report: dict) -> None:
    hw, s, base = report["hardware"], report["sizes"], report["base"]
    print(f"hardware: {hw['cpu']}, device {hw['device']}, {hw['torch_threads']} torch threads, torch {hw['torch']}, float32")
    print(f"base: {report['model']['dir']} ({report['model']['parameters']:,} parameters, hidden {report['model']['hidden']}, "
          f"{report['model']['layers']} layers): test accuracy {base['heldout_accuracy']:.3f}, loss {base['heldout_loss']:.3f}")
    print(f"task: {report['task']}; {s['train']} train / {s['validation']} validation / {s['test']} test; {s['epochs']} epoch, "
          f"batch {s['batch']}, AdamW + cosine, warm-up {s['warmup']} steps; lr sweep {s['lrs']} on seed 0, "
          f"{s['seeds']} seeds at each method's best validation loss")
    header = f"{'method':<14} {'params':>10} {'lr':>7} {'test accuracy':>15} {'test loss':>15} {'s/step':>7} {'vs LoRA':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for row in report["summary"]:
        ratio = f"{row['step_vs_lora_r32']:.2f}x" if row["step_vs_lora_r32"] else "-"
        print(f"{row['method']:<14} {row['trainable_params']:>10,} {row['lr']:>7g} "
              f"{row['heldout_accuracy_mean']:>7.3f} ± {row['heldout_accuracy_sd']:.3f} "
              f"{row['heldout_loss_mean']:>7.3f} ± {row['heldout_loss_sd']:.3f} {row['s_per_step']:>7.2f} {ratio:>8} "
              f"{row['peak_memory_mib']:>9.0f}")
    print("sweep (seed 0), test accuracy / validation loss by lr:")
    for method in s["methods"]:
        cells = [f"{r['lr']:g}: {r['heldout_accuracy']:.3f} / {r['validation_loss']:.3f}"
                 for r in report["runs"] if r["method"] == method and r["phase"] == "sweep"]
        print(f"  {method:<14} " + "   ".join(cells))
    print(f"(mean ± sd over seeds; total {report['seconds']:.0f} s)")


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in report["summary"]:
        ax.errorbar(row["trainable_params"] / 1e6, row["heldout_accuracy_mean"], yerr=row["heldout_accuracy_sd"],
                    fmt="o", capsize=3, label=f"{row['method']} (lr {row['lr']:g})")
    ax.axhline(report["base"]["heldout_accuracy"], color="grey", ls=":", label="base model")
    ax.set_xlabel("trainable parameters (M)")
    ax.set_ylabel("test accuracy (exact answer)")
    ax.set_title("SmolLM2-135M, 3-digit addition, mean ± sd over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def default_model_dir() -> str:
    from selora_serve.models import export
    from selora_serve.serve.plan import default_cache

    return str(export("smollm2", default_cache() / "models" / "smollm2", log=lambda m: print(m, file=sys.stderr)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Adapter quality on SmolLM2-135M-Instruct: SeLoRA-W (haar, db4), SeLoRA-F, LoRA r=32 and LoRA "
        "at SeLoRA's parameter count, on three-digit addition, with a learning-rate sweep and seeds. Prints a "
        "table and, last, one JSON line. About 90 minutes on 2 CPU cores.",
    )
    parser.add_argument("--model-dir", metavar="DIR", default=None,
                        help="the base model directory (default: SmolLM2-135M-Instruct exported to "
                        "~/.cache/selora-serve/models/smollm2 by `python -m selora_serve.models`)")
    parser.add_argument("--quick", action="store_true", help="smoke run for the test suite (2 methods, a few steps)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3)")
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates to sweep (default 2e-4,6e-4,2e-3)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--train-examples", type=int, default=None, help="training examples (one epoch; default 1200)")
    parser.add_argument("--digits", type=int, default=None, help="digits of each addend (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the JSON document here (after every run)")
    parser.add_argument("--plot", metavar="PATH", default=None, help="write a PNG of accuracy vs parameters here")
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
        if args.train_examples is not None:
            sizes = replace(sizes, train=args.train_examples)
        if args.digits is not None:
            sizes = replace(sizes, digits=args.digits)
    except ValueError as exc:
        parser.error(f"--lrs: expected numbers separated by commas ({exc})")
    unknown = [m for m in sizes.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; expected a subset of {', '.join(METHODS)}")
    if sizes.seeds < 1 or sizes.train < sizes.batch or not 1 <= sizes.digits <= 6:
        parser.error("--seeds must be >= 1, --train-examples at least one batch, --digits in 1..6")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    model_dir = args.model_dir or default_model_dir()
    report = run(model_dir, sizes, args.device, args.threads or os.cpu_count() or 1, args.json, args.progress)
    report["quick"] = args.quick
    print_table(report)
    if args.json:
        write_json(args.json, report)
    if args.plot:
        plot(report, args.plot)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
