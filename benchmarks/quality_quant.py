"""What quantising the coefficients costs in quality: the quality benchmark's SeLoRA adapters
(`benchmarks/quality_real.py`: SmolLM2-135M-Instruct, three-digit addition, r = 32 on q, k, v, up,
down), each trained once per seed at its method's chosen learning rate and evaluated on the same
held-out test split unquantised, then with its coefficients stored at 8 and 4 bits (format version
3: a float16 scale per 128, symmetric absmax) and dequantised.

    python benchmarks/quality_quant.py                  # 3 SeLoRA methods x 3 seeds, ~20 min on 2 cores
    python benchmarks/quality_quant.py --quick          # the suite's smoke run

Records {task, method, seed, bits (null when unquantised), heldout_accuracy, heldout_loss} are
appended to --results (JSON lines; a rerun skips the (method, seed) pairs already there); the
summary (--json) holds every record and, per bits, the mean accuracy and loss change against the
unquantised adapters (targets: >= -0.5 point at int8, >= -1.5 points at int4).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.quality_real import QUICK, Sizes, default_model_dir, run_one  # noqa: E402
from selora_serve.atomic import write_json  # noqa: E402

SPECTRAL = ("selora-w-haar", "selora-w-db4", "selora-f")
BITS = (8, 4)
TARGETS = {"8": -0.5, "4": -1.5}  # mean accuracy change, points
TASK = "three-digit addition"


def _in_child(args: tuple) -> dict:
    return run_one(*args)


def records_of(run: dict) -> list[dict]:
    """The run's unquantised and quantised scores as result records."""
    base = {"task": TASK, "method": run["method"], "seed": run["seed"], "lr": run["lr"]}
    out = [{**base, "bits": None, "heldout_accuracy": run["heldout_accuracy"], "heldout_loss": run["heldout_loss"]}]
    for bits, scores in sorted(run.get("quantised", {}).items(), key=lambda kv: -int(kv[0])):
        out.append({**base, "bits": int(bits), **scores})
    return out


def summary(records: list[dict]) -> dict:
    """Per bits: mean change (points, and loss) against the same adapter unquantised."""
    plain = {(r["method"], r["seed"]): r for r in records if r["bits"] is None}
    out = {}
    for bits in BITS:
        pairs = [(r, plain[(r["method"], r["seed"])]) for r in records
                 if r["bits"] == bits and (r["method"], r["seed"]) in plain]
        if not pairs:
            continue
        out[str(bits)] = {
            "adapters": len(pairs),
            "accuracy_change_points": round(statistics.mean(100 * (q["heldout_accuracy"] - p["heldout_accuracy"])
                                                            for q, p in pairs), 3),
            "loss_change": round(statistics.mean(q["heldout_loss"] - p["heldout_loss"] for q, p in pairs), 5),
            "worst_accuracy_change_points": round(min(100 * (q["heldout_accuracy"] - p["heldout_accuracy"])
                                                      for q, p in pairs), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct, exported once)")
    p.add_argument("--lrs", type=Path, default=HERE / "results" / "quality-real.json",
                   help="the quality benchmark's JSON, whose chosen learning rates are used (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke-sized: one method, one seed, a few steps")
    p.add_argument("--results", type=Path, default=HERE / "results" / "quality-quant.jsonl",
                   help="records, appended (default: %(default)s)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "quality-quant.json",
                   help="the summary (default: %(default)s)")
    args = p.parse_args(argv)
    sizes: Sizes = replace(QUICK, methods=SPECTRAL[:1]) if args.quick else Sizes()
    methods = sizes.methods if args.quick else SPECTRAL
    seeds = 1 if args.quick else args.seeds
    chosen = json.loads(args.lrs.read_text()).get("chosen_lr", {}) if args.lrs.is_file() else {}
    chosen = chosen.get("addition", chosen)  # per task since quality_real.py has two; addition is this one's
    missing = [m for m in methods if m not in chosen and not args.quick]
    if missing:
        p.error(f"--lrs {args.lrs}: no chosen learning rate for {', '.join(missing)}; run benchmarks/quality_real.py")
    model_dir = args.model or default_model_dir()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["seed"]) for r in map(json.loads, args.results.read_text().splitlines())
            if r["bits"] is None} if args.results.is_file() else set()
    context = multiprocessing.get_context("spawn")
    for seed in range(seeds):
        for method in methods:
            if (method, seed) in done:
                print(f"skip {method} seed {seed}: in {args.results}", file=sys.stderr)
                continue
            lr = sizes.lrs[0] if args.quick else chosen[method]
            with context.Pool(1, maxtasksperchild=1) as pool:  # a fresh process per run, as quality_real
                run = pool.apply(_in_child, ((model_dir, sizes, method, seed, lr, "cpu", args.threads, BITS),))
            with args.results.open("a") as f:
                for record in records_of(run):
                    f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), file=sys.stderr)
    records = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    report = {"benchmark": "quality-quant", "task": TASK, "quick": args.quick, "targets": TARGETS,
              "records": records, "summary": summary(records)}
    write_json(args.json, report)
    print(f"{'bits':>5} {'adapters':>9} {'accuracy change (points)':>26} {'worst':>8} {'loss change':>12}")
    for bits, s in report["summary"].items():
        print(f"{bits:>5} {s['adapters']:>9} {s['accuracy_change_points']:>26} {s['worst_accuracy_change_points']:>8} "
              f"{s['loss_change']:>12}")
    print(json.dumps(report["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
