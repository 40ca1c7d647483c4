"""Training step time: SeLoRA-W (haar, db4) and SeLoRA-F against LoRA r = 32, same model, same batch.

One optimiser step as `selora-train` runs it (`trainer.fit`: forward, backward, gradient
clipping, AdamW, schedule) on SmolLM2-135M-Instruct, adapters on q, k, v, up, down at r = 32
(eta 0.6 for SeLoRA), batch 8, in two regimes:

    short   the addition task of quality_real.py ("a+b=" -> "c"): ~10 tokens a sequence, where a
            per-step fixed cost (the adapter's decode and its backward) shows most
    alpaca  the same questions in the alpaca template: ~50 tokens a sequence

at 1 and 2 torch threads. Methods are interleaved within each round (each method `--steps`
steps, the first of each round dropped: optimiser state allocation), so drifts in this machine's
load hit all alike; the figure is the median step time over rounds, and the ratio to LoRA r32 in
the same (threads, regime). `--per-factor` adds SeLoRA decoded factor by factor (the path
before factor banks, `inject(..., batched=False)`) to show what batching buys. `--methods`
also takes selora-f-proj: SeLoRA-F trained with `--optimizer projected-adamw` (per-entry Adam
moments of the decoded matrices and one more adjoint a step).

Prints a table and, last, one JSON document; `--json PATH` writes it (atomically) after every
round, so an interrupted run keeps its rounds. `--quick`: the suite's smoke run (a tiny model).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch

try:  # as a module (tests) or as a script
    from benchmarks.publish import provenance, publish, quick_model_dir
    from benchmarks.quality_real import Sizes, default_model_dir, spec_for, target_shapes_of
    from benchmarks.quality_stats import parse_method
    from benchmarks.quality_tasks import addition_split, encode
except ImportError:
    from publish import provenance, publish, quick_model_dir
    from quality_real import Sizes, default_model_dir, spec_for, target_shapes_of
    from quality_stats import parse_method
    from quality_tasks import addition_split, encode
from selora_serve.atomic import write_json

METHODS = ("lora-r32", "selora-w-haar", "selora-w-db4", "selora-f", "selora-f-proj")
DEFAULT_METHODS = METHODS[:4]  # selora-f-proj (the projected optimiser) on request
REGIMES = ("short", "alpaca")


def examples_for(regime: str, tokenizer, count: int):
    """`count` training examples of the regime (see the module docstring)."""
    from selora_serve.prompts import alpaca_prompt

    pairs = addition_split(count, 0, 0)["train"]
    if regime == "alpaca":
        pairs = [(alpaca_prompt("Add the two numbers and give only the sum.", q.rstrip("=")), a) for q, a in pairs]
    return encode(pairs, tokenizer, "train")


def prepare(base, method: str, per_factor: bool):
    """A copy of `base` with `method`'s adapter injected."""
    from selora_serve.training.inject import inject

    model = copy.deepcopy(base)
    name = method.removesuffix("/per-factor")
    inject(model, spec_for(name, Sizes(), target_shapes_of(model), seed=0), batched=not per_factor)
    return model


def optimizer_of(method: str) -> str:
    """The optimiser a timed method trains with ("-proj": the projected one)."""
    return "projected-adamw" if parse_method(method.removesuffix("/per-factor"))[3] else "adamw"


def time_steps(model, examples, steps: int, batch: int, pad_id: int, optimizer: str = "adamw") -> list[float]:
    """Wall seconds of each of `steps` optimiser steps (all but the first: warm-up)."""
    from selora_serve.training.trainer import TrainConfig, fit

    config = TrainConfig(epochs=1, lr=1e-4, batch_size=batch, warmup=0.0, max_len=128, optimizer=optimizer)
    result = fit(model, examples[: steps * batch], config, pad_id=pad_id, progress=False)
    return result.step_seconds[1:]


def run(model_dir: str, threads: list[int], regimes: list[str], methods: list[str], rounds: int, steps: int,
        batch: int, json_path: str | None, progress: bool) -> dict:
    from selora_serve.training.data import pad_token_id
    from selora_serve.training.job import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    pad = pad_token_id(tokenizer)
    base = load_model(model_dir)
    data = {r: examples_for(r, tokenizer, steps * batch) for r in regimes}
    models = {m: prepare(base, m, m.endswith("/per-factor")) for m in methods}
    report = {
        "benchmark": "train-step", "complete": False,
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                     "torch": torch.__version__, "python": platform.python_version()},
        "model": {"dir": model_dir, "hidden": base.config.hidden_size, "layers": base.config.num_hidden_layers},
        "batch": batch, "steps_per_round": steps, "rounds": rounds,
        "tokens_per_sequence": {r: statistics.mean(len(e.input_ids) for e in data[r]) for r in regimes},
        "samples": [],  # {"round", "threads", "regime", "method", "optimizer", "step_seconds": [...]}
    }
    started = time.perf_counter()
    for round_ in range(rounds):
        for t in threads:
            torch.set_num_threads(t)
            for regime in regimes:
                for method in methods:
                    optimizer = optimizer_of(method)
                    seconds = time_steps(models[method], data[regime], steps, batch, pad, optimizer)
                    report["samples"].append({"round": round_, "threads": t, "regime": regime, "method": method,
                                              "optimizer": optimizer, "step_seconds": seconds})
                    if progress:
                        print(f"  round {round_} {t} thr {regime:<6} {method:<26} {statistics.median(seconds) * 1e3:7.1f} ms"
                              f"  [{time.perf_counter() - started:.0f} s]", file=sys.stderr)
        report["summary"] = summarise(report["samples"])
        report["seconds"] = time.perf_counter() - started
        if json_path:
            write_json(json_path, report)
    report["complete"] = True
    return report


def summarise(samples: list[dict]) -> list[dict]:
    """Per (threads, regime, method): the median step over all rounds, and its ratio to LoRA r32's
    (plus the median of per-round ratios, a check that one noisy round did not decide it)."""
    def med(rows):
        return statistics.median(s for r in rows for s in r["step_seconds"])

    keys = sorted(dict.fromkeys((s["threads"], s["regime"], s["method"]) for s in samples),
                  key=lambda k: (k[0], REGIMES.index(k[1])))  # stable: methods stay in run order
    out = []
    for t, regime, method in keys:
        rows = [s for s in samples if (s["threads"], s["regime"], s["method"]) == (t, regime, method)]
        lora = [s for s in samples if (s["threads"], s["regime"], s["method"]) == (t, regime, "lora-r32")]
        per_round = [med([r]) / med([l for l in lora if l["round"] == r["round"]])
                     for r in rows if any(l["round"] == r["round"] for l in lora)]
        out.append({"threads": t, "regime": regime, "method": method, "s_per_step": med(rows),
                    "vs_lora_r32": med(rows) / med(lora) if lora else None,
                    "vs_lora_r32_per_round_median": statistics.median(per_round) if per_round else None,
                    "rounds": len(rows)})
    return out


def print_table(report: dict) -> None:
    hw = report["hardware"]
    print(f"hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']}, float32; model {report['model']['dir']} "
          f"(hidden {report['model']['hidden']}, {report['model']['layers']} layers); batch {report['batch']}; "
          f"{report['rounds']} rounds of {report['steps_per_round']} steps (first of each dropped)")
    print("tokens per sequence: " + ", ".join(f"{k} {v:.1f}" for k, v in report["tokens_per_sequence"].items()))
    header = f"{'threads':>7} {'regime':<7} {'method':<26} {'ms/step':>8} {'vs LoRA r32':>12} {'(per round)':>12}"
    print(header)
    print("-" * len(header))
    for row in report["summary"]:
        ratio = f"{row['vs_lora_r32']:.3f}x" if row["vs_lora_r32"] else "-"
        per_round = f"{row['vs_lora_r32_per_round_median']:.3f}x" if row["vs_lora_r32_per_round_median"] else "-"
        print(f"{row['threads']:>7} {row['regime']:<7} {row['method']:<26} {row['s_per_step'] * 1e3:>8.1f} {ratio:>12} {per_round:>12}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Training step time of SeLoRA-W (haar, db4) and SeLoRA-F against LoRA r=32 on SmolLM2-135M, "
        "short (~10-token) and alpaca (~50-token) sequences, 1 and 2 threads. Prints a table and, last, one JSON "
        "document. About 12 minutes on 2 CPU cores (20 with --per-factor).")
    parser.add_argument("--model-dir", metavar="DIR", default=None, help="base model directory (default: SmolLM2, "
                        "exported by `python -m selora_serve.models smollm2` into the cache)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--regimes", default=",".join(REGIMES), help=f"subset of {','.join(REGIMES)}")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"subset of {','.join(METHODS)} (default "
                        f"{','.join(DEFAULT_METHODS)}; lora-r32 is the baseline and always included)")
    parser.add_argument("--per-factor", action="store_true", help="also time SeLoRA decoded factor by factor (no banks)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=8, help="steps per method per round, the first dropped (default 8)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the JSON document here (after every round)")
    parser.add_argument("--progress", action="store_true", help="a line per measurement on stderr")
    parser.add_argument("--quick", action="store_true", help="smoke run for the test suite: a tiny model, 1 round")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads: expected integers separated by commas, got {args.threads!r}")
    regimes, methods = args.regimes.split(","), [m for m in args.methods.split(",") if m != "lora-r32"]
    bad = [r for r in regimes if r not in REGIMES] + [m for m in methods if m not in METHODS]
    if bad:
        parser.error(f"unknown regime or method: {', '.join(bad)} (regimes: {', '.join(REGIMES)}; methods: {', '.join(METHODS)})")
    if min(threads) < 1 or args.rounds < 1 or args.steps < 2 or args.batch < 1:
        parser.error("--threads >= 1, --rounds >= 1, --steps >= 2 (the first is dropped), --batch >= 1")
    methods = ["lora-r32"] + methods
    if args.per_factor:
        # the projected optimiser steps factor banks, so it has no per-factor form
        methods += [f"{m}/per-factor" for m in methods if m.startswith("selora") and optimizer_of(m) == "adamw"]
    if args.quick:
        model_dir = quick_model_dir("train-step")
        args.rounds, args.steps, args.batch = 1, 3, 2
    else:
        model_dir = args.model_dir or default_model_dir()
    report = run(model_dir, threads, regimes, methods, args.rounds, args.steps, args.batch, args.json, args.progress)
    report["quick"] = args.quick
    report["provenance"] = provenance("train_step.py", argv)
    publish(report, table=print_table, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
