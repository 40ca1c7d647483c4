"""Load test: many concurrent clients over many adapters; every answer checked, memory watched.

    python benchmarks/load.py            # 64 adapters, 16 clients, 150 s (on CPU)
    python benchmarks/load.py --quick    # 64 adapters, 8 clients, 20 s

Builds a tiny local Llama-shaped model and `--adapters` random-B SeLoRA checkpoints (the library
calls behind `selora-convert init`: Haar, Daubechies-4 and Fourier in turn), computes every
adapter's reference greedy tokens with transformers + PEFT on its `selora-convert to-peft` twin
(independent of vLLM), then starts its own `selora-serve` on 127.0.0.1 (store defaults: 4 slots,
32-adapter host cache, so adapters keep being evicted and decoded again) and runs `--clients`
concurrent `openai.AsyncOpenAI` clients for `--duration` seconds or `--max-requests` requests,
whichever ends first. Each request names a random adapter (or the base model, 1 in 17) and one of
a few prompts, greedy, fixed length; its token ids must equal the reference for the model it
named. The server's process tree RSS (psutil) is sampled every second.

Prints a table (requests, status counts, 5xx, mismatches, p50/p99 latency, RSS start/peak/end),
writes the full result with the RSS curve to benchmarks/results/load[-quick].json (atomically;
`--plot` adds a PNG) and prints, as the very last line, one JSON document. Exit status 1 if any
answer was a 5xx, a transport error or a wrong output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from selora_serve.atomic import atomic_file, write_json
from selora_serve.serve import launch

RESULTS = Path(__file__).parent / "results"
PROMPTS = ("the cat is", "river and mountain", "one two three four")
BASE = "tiny"
KINDS = (dict(basis="wavelet", wavelet="haar"), dict(basis="wavelet", wavelet="db4"), dict(basis="fourier", wavelet=None))


def build(root: Path, n: int) -> tuple[Path, Path, list[str]]:
    """The tiny base model and a store of `n` random-B adapters under `root`."""
    from selora_serve.config import SeLoRAConfig
    from selora_serve.convert import init_checkpoint
    from selora_serve.tiny import build_tiny_model

    model = build_tiny_model(root / "tiny-llama", seed=0)
    names = [f"tenant-{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        config = SeLoRAConfig(r=8, alpha=16, eta=0.6, seed=i + 1, **KINDS[i % len(KINDS)])
        init_checkpoint(model, root / "store" / name, config, random_b=True, init_seed=1000 + i)
    return model, root / "store", names


def references(model: Path, store: Path, names: list[str], max_tokens: int, work: Path) -> dict:
    """{(model name, prompt): greedy token ids} from transformers (+ PEFT on the to-peft twin)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selora_serve.convert import to_peft
    from selora_serve.reference import greedy_tokens

    tok = AutoTokenizer.from_pretrained(str(model))
    base = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()

    def greedy(m) -> list[list[int]]:
        return greedy_tokens(m, tok, PROMPTS, max_tokens)

    refs = {(BASE, p): t for p, t in zip(PROMPTS, greedy(base))}
    for name in names:
        peft_dir = to_peft(store / name, work / "peft" / name)
        adapted = PeftModel.from_pretrained(base, str(peft_dir), adapter_name=name)
        refs.update({(name, p): t for p, t in zip(PROMPTS, greedy(adapted))})
        base = adapted.unload()  # the same base weights, ready for the next adapter
    return refs


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self.stopped.is_set():
            self.samples.append((round(time.monotonic() - self.t0, 1), tree_rss(self.pid)))
            self.stopped.wait(self.every)


async def drive(server, refs: dict, names: list[str], args) -> list[dict]:
    import openai

    client = server.async_client(timeout=300)
    deadline = time.monotonic() + args.duration
    issued = 0
    results: list[dict] = []

    async def worker(seed: int):
        nonlocal issued
        rng = random.Random(seed)
        while time.monotonic() < deadline and issued < args.max_requests:
            issued += 1
            model = BASE if rng.random() < 1 / 17 else rng.choice(names)
            prompt = rng.choice(PROMPTS)
            start = time.monotonic()
            row = {"model": model, "t": round(start - deadline + args.duration, 2)}
            try:
                resp = await client.completions.create(
                    model=model, prompt=prompt, max_tokens=args.max_tokens, temperature=0,
                    extra_body={"min_tokens": args.max_tokens, "return_token_ids": True})
                row["status"] = 200
                tokens = list(resp.choices[0].model_extra["token_ids"])
                row["correct"] = tokens == refs[(model, prompt)]
                if not row["correct"]:  # whose answer was it? (another adapter's would be a leak)
                    row["prompt"], row["tokens"] = prompt, tokens
                    row["equals_reference_of"] = [m for (m, p), t in refs.items() if p == prompt and t == tokens]
            except openai.APIStatusError as exc:
                row["status"] = exc.status_code
            except Exception as exc:  # transport failures are results too
                row["status"] = f"error: {type(exc).__name__}"
            row["latency_s"] = round(time.monotonic() - start, 4)
            results.append(row)

    await asyncio.gather(*(worker(args.seed + i) for i in range(args.clients)))
    await client.close()
    return results


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summarise(rows: list[dict], samples: list[tuple[float, int]], wall: float) -> dict:
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    ok = [r for r in rows if r["status"] == 200]
    lat = [r["latency_s"] for r in ok]
    rss = [b for _, b in samples]
    third = max(1, len(rss) // 3)
    return {
        "requests": len(rows), "wall_s": round(wall, 1), "requests_per_s": round(len(rows) / wall, 2),
        "status": statuses,
        "errors_5xx": sum(1 for r in rows if isinstance(r["status"], int) and r["status"] >= 500),
        "transport_errors": sum(1 for r in rows if isinstance(r["status"], str)),
        "wrong_outputs": sum(1 for r in ok if not r["correct"]),
        "wrong_by_model": {m: sum(1 for r in ok if not r["correct"] and r["model"] == m)
                           for m in sorted({r["model"] for r in ok if not r["correct"]})},
        "adapters_hit": len({r["model"] for r in ok}),
        "latency_ms": {"p50": round(1e3 * percentile(lat, 0.5), 1), "p99": round(1e3 * percentile(lat, 0.99), 1),
                       "max": round(1e3 * max(lat, default=float("nan")), 1)},
        "rss_mib": {"start": round(rss[0] / 2**20), "peak": round(max(rss) / 2**20), "end": round(rss[-1] / 2**20),
                    "mean_first_third": round(statistics.mean(rss[:third]) / 2**20),
                    "mean_last_third": round(statistics.mean(rss[-third:]) / 2**20)} if rss else {},
    }


def print_table(doc: dict) -> None:
    s = doc["summary"]
    print(f"\nselora-serve load test: {doc['config']['adapters']} adapters, {doc['config']['clients']} clients, "
          f"{s['wall_s']} s on {doc['hardware']['cpus']} CPU(s) (load avg before {doc['hardware']['loadavg_before']})")
    print(f"{'requests':>10} {'req/s':>7} {'5xx':>5} {'transport':>9} {'wrong':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS start':>10} {'RSS peak':>9} {'RSS end':>8}")
    r = s["rss_mib"]
    print(f"{s['requests']:>10} {s['requests_per_s']:>7} {s['errors_5xx']:>5} {s['transport_errors']:>9} "
          f"{s['wrong_outputs']:>6} {s['latency_ms']['p50']:>8} {s['latency_ms']['p99']:>8} "
          f"{r.get('start', 0):>7} MiB {r.get('peak', 0):>5} MiB {r.get('end', 0):>4} MiB")
    print(f"status counts: {s['status']}; adapters answered: {s['adapters_hit']}; RSS mean first/last third: "
          f"{r.get('mean_first_third')}/{r.get('mean_last_third')} MiB")


def plot(samples, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([t for t, _ in samples], [b / 2**20 for _, b in samples])
    ax.set_xlabel("seconds since server start"), ax.set_ylabel("server tree RSS (MiB)")
    fig.tight_layout()
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", type=int, default=64, help="adapters in the store (default 64)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of load (default 150)")
    p.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests")
    p.add_argument("--max-tokens", type=int, default=8, help="generated tokens per request (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="20 s, 8 clients")
    p.add_argument("--plot", action="store_true", help="also write a PNG of the RSS curve")
    p.add_argument("--json", type=Path, default=None, help="result file (default benchmarks/results/load[-quick].json)")
    p.add_argument("--workdir", type=Path, default=None, help="where model, store and logs go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.clients = min(args.duration, 20.0), min(args.clients, 8)
    args.json = args.json or RESULTS / ("load-quick.json" if args.quick else "load.json")
    return args


def run(args, root: Path) -> dict:
    load_before = [round(x, 2) for x in psutil.getloadavg()]
    t0 = time.monotonic()
    model, store, names = build(root, args.adapters)
    refs = references(model, store, names, args.max_tokens, root)
    prep_s = time.monotonic() - t0
    cmd = launch.selora_serve_command(["--model", str(model), "--adapters", str(store), "--served-model-name", BASE,
                                       *launch.CPU_OPTIONS])
    server = launch.start(cmd, root / "selora-serve.log", name="selora-serve")
    sampler = RssSampler(server.process.pid)
    sampler.start()
    try:
        start = time.monotonic()
        rows = asyncio.run(drive(server, refs, names, args))
        wall = time.monotonic() - start
        time.sleep(1.5)  # one more sample after the load
    finally:
        sampler.stopped.set()
        sampler.join()
        launch.stop(server)
    return {
        "benchmark": "load",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "workdir"},
        "hardware": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                     "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in psutil.getloadavg()]},
        "preparation_s": round(prep_s, 1),
        "summary": summarise(rows, sampler.samples, wall),
        "rss_curve": [[t, round(b / 2**20, 1)] for t, b in sampler.samples],
        "requests": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="selora-load-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        doc = run(args, root)
    write_json(args.json, doc)
    if args.plot:
        plot([tuple(x) for x in doc["rss_curve"]], args.json.with_suffix(".png"))
    print_table(doc)
    s = doc["summary"]
    print(json.dumps({"benchmark": "load", "json": str(args.json), **s}))
    return 0 if s["errors_5xx"] == 0 and s["transport_errors"] == 0 and s["wrong_outputs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
