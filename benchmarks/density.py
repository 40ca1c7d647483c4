"""A thousand adapters per replica: selora-serve's quantised host tier against plain vLLM.

N (default 1,000) SeLoRA-W Haar adapters of the real model (SmolLM2-135M-Instruct, q, k, v, up,
down, eta 0.6) stored with int4 coefficients (group 128), and their dense PEFT twins in bfloat16
(the dequantised adapters, `selora-convert to-peft`), served with 8 LoRA slots by:

  selora   selora-serve --host-cache-form spectral: the host tier holds each adapter as stored
           (int4 values and scales, `--host-cache-bytes`); every activation decodes it.
  dense    plain vLLM 0.32 with its filesystem resolver over the twins (as benchmarks/serve.py).

Two comparisons, each one server at a time (the machine's memory), same engine options:

  budget    (a) the same host-memory budget: selora-serve's tier holds all N int4 adapters, B bytes
            (`selora_adapter_resident_bytes{tier="host"}` after the preload); plain vLLM gets
            --max-cpu-loras = B / (its dense bytes per adapter), and reloads the rest from disk.
            Rank --rank (16).
  resident  (b) plain vLLM with every dense twin in its host cache (--max-cpu-loras N) against
            selora-serve with every adapter in its tier; rank --resident-rank (8: 1,000 dense
            float32 twins at r = 16 are 13 GB, more than this 24 GB machine holds beside the rest).

Per server: a preload (one 1-token request per adapter, in order, untimed), then for each
popularity (Zipf alpha = 1, p_i ~ 1/i, and uniform) one seeded trace of --requests streamed
requests (--prompt-len random token ids, --max-tokens output tokens with ignore_eos,
--concurrency in flight): output tokens/s, TTFT p50/p99, host RSS (the server's process tree,
after the trace; and its growth over the server's RSS before the preload, after one base-model
request: what the adapters cost, the figure the RSS target is about), and activations and disk loads per second. Those come from selora-serve's own
counters (`selora_adapter_decode_seconds_count`: every load or activation decodes once;
`selora_adapter_loads_total`) and, for both systems, from replaying the trace through the two LRU
tiers (slots, host cache) sequentially ("simulated": concurrency reorders a few). The twins'
files stay in the OS page cache (24 GB of RAM holds them), which flatters plain vLLM's reloads.

Resumable: each finished (comparison, popularity, system) record is appended to --results
(JSON lines) and skipped on a rerun; adapters already built are kept. The summary (ratios
selora / dense per comparison and popularity, against the issue's targets) is printed and written
to --summary. A full run takes about 1-2 hours on 2 cores; `--quick` (N = 24, 24 requests) checks
the machinery in a few minutes. Run from the repository root:  python benchmarks/density.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import psutil
import torch

from selora_serve.atomic import write_json
from selora_serve.checkpoint import load_checkpoint, save_checkpoint
from selora_serve.checkpoint.quant import QuantSpec
from selora_serve.config import SeLoRAConfig
from selora_serve.convert import init_checkpoint, to_peft
from selora_serve.serve import launch
from selora_serve.serve.plan import supported_rank

try:
    from benchmarks.decode import hardware
    from benchmarks.traffic import ms, prompts, request, run_trace, trace_models
except ImportError:
    from decode import hardware
    from traffic import ms, prompts, request, run_trace, trace_models

TARGETS = {"budget": {"output_tokens_per_s": 1.0, "ttft_p99_ms": 0.8},
           "resident": {"output_tokens_per_s": 0.97, "rss_adapters_bytes": 0.15}}
COMPARISONS = ("budget", "resident")
POPULARITIES = ("zipf", "uniform")
SYSTEMS = ("selora", "dense")
MODULES = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
BASE = "base"
DENSE_BYTES_PER_PARAM = 4  # vLLM on CPU holds LoRA weights in float32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", type=int, default=1000, help="N adapters per comparison (default 1000)")
    p.add_argument("--rank", type=int, default=16, help="rank of the same-budget comparison (default 16)")
    p.add_argument("--resident-rank", type=int, default=8, help="rank of the all-resident comparison (default 8)")
    p.add_argument("--bits", type=int, choices=(8, 4), default=4, help="coefficient bits (default 4)")
    p.add_argument("--slots", type=int, default=8, help="LoRA slots, --max-loras (default 8)")
    p.add_argument("--requests", type=int, default=400, help="requests per trace (default 400)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--comparisons", default=",".join(COMPARISONS), help="which to run (default: both)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/selora-serve/bench-density",
                   help="where the model and adapters are built and kept")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/density.jsonl"))
    p.add_argument("--summary", type=Path, default=Path("benchmarks/results/density.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round", type=int, default=0,
                   help="a repeat of the run, recorded as such (default 0); odd rounds start each comparison with "
                        "plain vLLM once selora-serve's bytes are known, so drift lands on both systems. Ratios "
                        "are medians over rounds")
    p.add_argument("--quick", action="store_true", help="N = 24, 24 requests, results under --work (a check)")
    args = p.parse_args(argv)
    if args.quick:
        args.adapters, args.requests = 24, 24
        args.results, args.summary = args.work / "quick.jsonl", args.work / "quick.json"
    args.comparisons = [c.strip() for c in args.comparisons.split(",") if c.strip()]
    if not set(args.comparisons) <= set(COMPARISONS) or not args.comparisons:
        p.error(f"--comparisons: expected some of {', '.join(COMPARISONS)}")
    return args


# ---------------------------------------------------------------- adapters


def names(n: int) -> list[str]:
    return [f"t{i:04d}" for i in range(n)]


def build_adapters(model: Path, root: Path, rank: int, n: int, bits: int, seed: int) -> tuple[Path, Path]:
    """N quantised SeLoRA checkpoints under root/selora and their bf16 dense twins under root/dense
    (kept when present): one initialised template, per-name sign flips (serve.py's scheme)."""
    store, dense = root / "selora", root / "dense"
    store.mkdir(parents=True, exist_ok=True)
    dense.mkdir(parents=True, exist_ok=True)
    template_dir = root / "template"
    if not template_dir.is_dir():
        config = SeLoRAConfig(r=rank, alpha=2 * rank, eta=0.6, seed=seed, basis="wavelet", wavelet="haar",
                              target_modules=MODULES)
        init_checkpoint(model, template_dir, config, random_b=True, init_seed=seed + 1)
    template = load_checkpoint(template_dir)
    started, todo = time.perf_counter(), [x for x in names(n) if not (dense / x).is_dir()]
    for done, name in enumerate(todo, 1):
        if not (store / name).is_dir():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + int(name[1:]))
            adapter = replace(template, modules={
                key: replace(m, coef_a=m.coef_a * _signs(m.coef_a, gen), coef_b=m.coef_b * _signs(m.coef_b, gen))
                for key, m in template.modules.items()})
            save_checkpoint(adapter, store / name, quantization=QuantSpec(bits))
        to_peft(store / name, dense / name, dtype="bfloat16")
        if done % 50 == 0 or done == len(todo):
            print(f"  adapters r={rank}: {done}/{len(todo)} built ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    return store, dense


def _signs(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1


def dense_bytes(model: Path, rank: int) -> int:
    """Bytes plain vLLM holds per dense adapter on CPU: r (in + out) float32 per adapted module."""
    from selora_serve.base_model import load_config, target_shapes

    shapes = target_shapes(load_config(model), MODULES)
    return sum(rank * (d_in + d_out) for d_in, d_out in shapes.values()) * DENSE_BYTES_PER_PARAM


# ---------------------------------------------------------------- servers


def start(system: str, model: Path, store: Path, dense: Path, args, rank: int, host: dict, log: Path):
    common = ["--model", str(model), "--served-model-name", BASE, "--max-num-seqs", str(args.max_num_seqs),
              "--dtype", "float32", *launch.CPU_OPTIONS, "--enable-lora", "--max-lora-rank",
              str(supported_rank(rank)), "--max-loras", str(args.slots)]
    if system == "dense":
        cmd = launch.vllm_command(common + ["--max-cpu-loras", str(host["max_cpu_loras"])])
        env = {"VLLM_PLUGINS": "lora_filesystem_resolver", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
               "VLLM_LORA_RESOLVER_CACHE_DIR": str(dense)}
    else:
        cmd = launch.selora_serve_command(common + ["--adapters", str(store), "--host-cache-form", "spectral",
                                                    "--host-cache-bytes", str(host["host_cache_bytes"])])
        env = {}
    print(f"starting {system} ({' '.join(f'{k}={v}' for k, v in host.items())}) ...", file=sys.stderr, flush=True)
    return launch.start(cmd, log, env=env, timeout=600, name=system)


def scrape(server) -> dict[str, float]:
    """selora_* samples of the server's /metrics, summed over labels except tier="host"/"slot"."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("selora_"):
                key = s.name + (f"{{tier={s.labels['tier']}}}" if "tier" in s.labels else "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def tree_rss(server) -> int:
    root = psutil.Process(server.process.pid)
    total = root.memory_info().rss
    for proc in root.children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def preload(server, adapter_names: list[str]) -> float:
    client = server.async_client()
    start = time.perf_counter()
    for i, name in enumerate(adapter_names, 1):
        await request(client, name, [11, 12, 13, 14], 1)
        if i % 100 == 0:
            print(f"  preloaded {i}/{len(adapter_names)}", file=sys.stderr, flush=True)
    await client.close()
    return time.perf_counter() - start


def simulate(models: list[str], slots: int, host: int, warm: list[str] = ()) -> dict[str, int]:
    """Activations (not in a slot) and disk loads (not in the host cache either) of `models` in
    order, through two LRU tiers of `slots` and `host` adapters after the requests `warm` (the
    preload, and earlier traces) went through them."""
    slot_lru: OrderedDict = OrderedDict()
    host_lru: OrderedDict = OrderedDict()
    counts = {"activations": 0, "disk_loads": 0}
    for k, name in enumerate([*warm, *models]):
        counted = k >= len(warm)
        if name not in slot_lru:
            counts["activations"] += counted
            if name not in host_lru:
                counts["disk_loads"] += counted
        for lru, size in ((slot_lru, slots), (host_lru, host)):
            lru[name] = None
            lru.move_to_end(name)
            while len(lru) > size:
                lru.popitem(last=False)
    return counts


# ---------------------------------------------------------------- runs


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def done_keys(path: Path) -> set[tuple]:
    return {(r["comparison"], r["popularity"], r["system"], r.get("round", 0)) for r in read_records(path)}


def run_system(comparison: str, system: str, model: Path, store: Path, dense: Path, rank: int, host: dict,
               args, todo: list[str]) -> list[dict]:
    adapter_names = names(args.adapters)
    args.work.joinpath("logs").mkdir(parents=True, exist_ok=True)
    server = start(system, model, store, dense, args, rank, host, args.work / "logs" / f"{comparison}-{system}.log")
    records = []
    try:
        asyncio.run(preload(server, [BASE]))  # one base-model request: the server's own one-time costs
        rss_base = tree_rss(server)
        preload_s = asyncio.run(preload(server, adapter_names))
        after_preload = scrape(server) if system == "selora" else {}
        history = list(adapter_names)  # what went through the caches so far, in order
        for popularity in todo:
            seed = args.seed + POPULARITIES.index(popularity)
            models = trace_models(adapter_names, args.requests, popularity, seed)
            prompt_ids = prompts(args.requests, args.prompt_len, 49152, seed)
            before = scrape(server) if system == "selora" else {}
            samples, wall = asyncio.run(run_trace(server, models, prompt_ids, args.max_tokens, args.concurrency))
            after = scrape(server) if system == "selora" else {}
            ttft = sorted(s.ttft for s in samples)
            tokens = sum(s.tokens for s in samples)
            host_count = host.get("max_cpu_loras") or args.adapters
            sim = simulate(models, args.slots, host_count, history)
            history += models
            record = {
                "comparison": comparison, "popularity": popularity, "system": system, "round": args.round,
                "adapters": args.adapters,
                "rank": rank, "slots": args.slots, **host, "requests": len(samples), "wall_s": round(wall, 3),
                "output_tokens_per_s": round(tokens / wall, 3), "requests_per_s": round(len(samples) / wall, 3),
                "ttft_p50_ms": ms(ttft[len(ttft) // 2]), "ttft_p99_ms": ms(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))]),
                "rss_bytes": (rss := tree_rss(server)), "rss_base_bytes": rss_base,
                "rss_adapters_bytes": rss - rss_base, "preload_s": round(preload_s, 1),
                "simulated_activations_per_s": round(sim["activations"] / wall, 3),
                "simulated_disk_loads_per_s": round(sim["disk_loads"] / wall, 3),
            }
            if system == "selora":
                def delta(key):
                    return after.get(key, 0.0) - before.get(key, 0.0)
                record.update({
                    "decodes_per_s": round(delta("selora_adapter_decode_seconds_count") / wall, 3),
                    "loads_per_s": round(delta("selora_adapter_loads_total") / wall, 3),
                    "host_resident_bytes": after.get("selora_adapter_resident_bytes{tier=host}"),
                    "host_resident_adapters": after.get("selora_adapters_resident{tier=host}"),
                    "host_resident_bytes_after_preload": after_preload.get("selora_adapter_resident_bytes{tier=host}"),
                })
            print(json.dumps(record), file=sys.stderr, flush=True)
            records.append(record)
            with open(args.results, "a") as fh:
                fh.write(json.dumps(record) + "\n")
    finally:
        launch.stop(server)
    return records


def host_settings(comparison: str, system: str, args, model: Path, rank: int, selora_bytes: int | None) -> dict:
    """The host cache of `system`: selora-serve's tier holds every adapter (its bytes, measured
    after the preload, set plain vLLM's budget in comparison (a))."""
    if system == "selora":
        return {"host_cache_bytes": 64 << 30}
    if selora_bytes is None:
        raise SystemExit(f"{comparison}: run selora first (its host bytes set plain vLLM's budget)")
    if comparison == "resident":
        return {"max_cpu_loras": args.adapters}
    return {"max_cpu_loras": max(args.slots, selora_bytes // dense_bytes(model, rank))}


def summarise(records: list[dict]) -> dict:
    """Per comparison and popularity: the median over rounds of each round's selora / dense ratio."""
    import statistics

    out: dict = {"ratios": {}, "records": records}
    by = {(r["comparison"], r["popularity"], r["system"], r.get("round", 0)): r for r in records}
    rounds = sorted({r.get("round", 0) for r in records})
    keys = ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "rss_bytes", "rss_adapters_bytes")
    for comparison in COMPARISONS:
        for popularity in POPULARITIES:
            per_round = []
            for rnd in rounds:
                sel, den = by.get((comparison, popularity, "selora", rnd)), by.get((comparison, popularity, "dense", rnd))
                if sel and den:
                    per_round.append({k: sel[k] / den[k] for k in keys if den.get(k)})
            if not per_round:
                continue
            ratios = {k: round(statistics.median(r[k] for r in per_round), 3) for k in per_round[0]}
            met = {k: (ratios[k] >= t if k == "output_tokens_per_s" else ratios[k] <= t)
                   for k, t in TARGETS[comparison].items() if k in ratios}
            out["ratios"][f"{comparison}/{popularity}"] = {**ratios, "rounds": len(per_round), "targets_met": met}
    return out


def print_table(summary: dict) -> None:
    print("| comparison | popularity | system | round | tokens/s | TTFT p50 / p99 ms | RSS GiB (adapters) | act./s (sim) "
          "| loads/s (sim) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in summary["records"]:
        print(f"| {r['comparison']} | {r['popularity']} | {r['system']} | {r.get('round', 0)} | "
              f"{r['output_tokens_per_s']:.1f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['rss_bytes'] / 2**30:.2f} "
              f"({r['rss_adapters_bytes'] / 2**30:.2f}) | "
              f"{r['simulated_activations_per_s']:.2f} | {r['simulated_disk_loads_per_s']:.2f} |")
    for key, ratios in summary["ratios"].items():
        print(f"{key}: selora/dense {ratios}")


def main(argv=None) -> None:
    args = parse_args(argv)
    from selora_serve.models import export

    args.work.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    model = export("smollm2", args.work / "smollm2", log=lambda line: print(line, file=sys.stderr)) \
        if not (args.work / "smollm2" / "config.json").is_file() else args.work / "smollm2"
    done = done_keys(args.results)
    for comparison in args.comparisons:
        rank = args.rank if comparison == "budget" else args.resident_rank
        store, dense = build_adapters(model, args.work / f"r{rank}-n{args.adapters}-int{args.bits}", rank,
                                      args.adapters, args.bits, args.seed)
        known = [r for r in read_records(args.results) if r["comparison"] == comparison and r["system"] == "selora"
                 and r.get("host_resident_bytes_after_preload")]
        selora_bytes = int(known[0]["host_resident_bytes_after_preload"]) if known else None
        order = SYSTEMS[::-1] if args.round % 2 and known else SYSTEMS  # selora first unless its bytes are known
        for system in order:
            todo = [p for p in POPULARITIES if (comparison, p, system, args.round) not in done]
            if not todo:
                continue
            host = host_settings(comparison, system, args, model, rank, selora_bytes)
            records = run_system(comparison, system, model, store, dense, rank, host, args, todo)
            if system == "selora" and records:
                selora_bytes = int(records[0]["host_resident_bytes_after_preload"])
    records = read_records(args.results)
    summary = {"hardware": hardware(["cpu"]), "targets": TARGETS, **summarise(records)}
    write_json(args.summary, summary)
    print_table(summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}))


if __name__ == "__main__":
    main()
