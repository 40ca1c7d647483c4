"""Serving throughput and latency: selora-serve against plain vLLM with dense LoRA, same engine.

For each N in the sweep (default 1, 8, 64, 256) the same request trace runs against

  dense    plain vLLM (`python -m vllm.entrypoints.openai.api_server`) serving the dense PEFT twins
           (`selora-convert to-peft`) of the adapters, found lazily by name through vLLM's own
           filesystem resolver (VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, VLLM_LORA_RESOLVER_CACHE_DIR,
           only the `lora_filesystem_resolver` plugin). Not `--lora-modules`: vLLM 0.32 loads those
           eagerly at start-up (`init_static_loras` -> `add_lora`), so no adapter would ever be cold.
  selora   `selora-serve` serving the spectral checkpoints from its store (its resolver validates a
           checkpoint on first request, the worker decodes it in memory into vLLM's LoRA slots),

with identical engine options (--max-loras slots, --max-cpu-loras host cache, --max-lora-rank,
--max-num-seqs, --dtype, context length). Two ceilings run the trace once, after a warm-up request:
`base` (plain vLLM, LoRA disabled) and `merged` (`selora-serve --merge`: one adapter merged into W0).

The dense and selora servers run side by side and the phases alternate between them (the order
flips every N), so drift in the machine's load lands on both. Each N has its own adapters
(`n{N}-a{i}`), so every trace starts with all of its adapters on disk only. Per server:

  memory   after one base-model request and one adapter request (one-time costs: imports,
           decoding tables), process-tree RSS (psutil) before and after loading M fresh adapters
           into the host cache (M < host cache, one 2-token request each);
           (after - before) / M = host memory per cached adapter. Beside it: dense tensor bytes,
           and the spectral bytes on disk (what a cache kept in spectral form would hold).
  trace    R requests (a fixed total, not per adapter: at N=256 and R=64 most requests hit a
           cold adapter), model names drawn from N adapters uniformly and by Zipf popularity
           (p_i ~ 1/i), seeded; fixed prompt length (distinct random token ids per request, so
           prefix caching does not help) and output length (ignore_eos); C concurrent streams
           (openai AsyncOpenAI, streaming). requests/s and output tokens/s over the wall time;
           TTFT p50/p99; inter-token latency p50 over requests, each
           request's (last token - first token) / (tokens - 1): vLLM merges the tokens of a
           stream into one chunk when the client lags, so gaps between chunks would undercount.
  cold     P sequential requests (concurrency 1), each to a never-requested adapter: the TTFT
           includes resolving, loading (selora: validating and decoding) and the first token.
  warm     the same P adapters again, in the same order: with P > slots each is in the host cache
           but no longer in a slot, so the TTFT includes activation but no load.

Ratios are selora over dense. Adapter files were just written, so both systems read them from the
page cache (disk latency is not measured). Runs on CPU with a local Llama-shaped model built by
`selora_serve.tiny` (presets below); `--model DIR` and `--vllm-args` for a real model on a GPU.

Prints a table (hardware and sizes stated), writes PNG plots to --plot-dir and, with --json PATH,
the JSON document atomically; the last stdout line is the same JSON document.
Run from the repository root:  python benchmarks/serve.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import torch

from selora_serve.atomic import write_json
from selora_serve.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from selora_serve.checkpoint.format import bytes_on_disk, dense_lora_bytes
from selora_serve.config import SeLoRAConfig
from selora_serve.convert import init_checkpoint, to_peft
from selora_serve.serve import launch
from selora_serve.serve.plan import on_cpu, supported_rank
from selora_serve.tiny import TinySpec, build_tiny_model

try:  # a sibling script: importable as benchmarks.decode from the root, as decode from here
    from benchmarks.decode import hardware
except ImportError:
    from decode import hardware

PRESETS = {  # (model shape, LoRA rank); head_dim 32 or 64, both supported by vLLM's CPU attention
    "tiny": (TinySpec(), 8),  # the demo model: hidden 128, 2 layers
    "small": (TinySpec(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=2), 16),
    "medium": (TinySpec(hidden_size=1024, intermediate_size=2752, num_hidden_layers=4,
                        num_attention_heads=16, num_key_value_heads=4), 16),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
SYSTEMS = ("dense", "selora", "base", "merged")
BASE_NAME, MERGED_NAME = "base", "merged"
POPULARITY = ("uniform", "zipf")
# selora_serve.vllm_ext.loading logs one line per decode, with its time.
DECODE_LOG = re.compile(r"decoded SeLoRA adapter .* in ([0-9.]+) ms")


# ---------------------------------------------------------------- adapters


@dataclass
class Workspace:
    model: Path
    store: Path  # SeLoRA checkpoints, one directory per adapter name
    dense: Path  # their PEFT twins, same names
    merge_cache: Path


def adapter_names(sweep: list[int], probes: int, mem: int) -> list[str]:
    names = ["mem-primer"] + [f"mem-{j}" for j in range(mem)]
    for n in sweep:
        names += [f"n{n}-a{i}" for i in range(n)] + [f"n{n}-cold{j}" for j in range(probes)]
    return names


def build_workspace(root: Path, spec: TinySpec, rank: int, eta: float, names: list[str], seed: int,
                    model: Path | None = None) -> Workspace:
    """The base model (unless given) and every named adapter with its dense twin (kept if present).

    One adapter comes from `init_checkpoint`; the others reuse its Omega and flip the signs of
    its coefficients with a per-name seed: distinct weights, same sizes, and no per-adapter
    variance-matching projection (seconds each for the larger presets).
    """
    ws = Workspace(model or root / "model", root / "selora", root / "dense", root / "merged")
    if model is None and not ws.model.is_dir():
        build_tiny_model(ws.model, seed=seed, spec=spec)
    ws.store.mkdir(parents=True, exist_ok=True)
    ws.dense.mkdir(parents=True, exist_ok=True)
    template_dir = root / "template"
    if not template_dir.is_dir():
        config = SeLoRAConfig(r=rank, alpha=2 * rank, eta=eta, seed=seed, basis="wavelet", wavelet="haar",
                              target_modules=TARGETS)
        init_checkpoint(ws.model, template_dir, config, random_b=True, init_seed=seed + 1)
    template = load_checkpoint(template_dir)
    for k, name in enumerate(names):
        if not (ws.store / name).is_dir():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
            adapter = replace(template, modules={
                key: replace(m, coef_a=m.coef_a * _signs(m.coef_a, gen), coef_b=m.coef_b * _signs(m.coef_b, gen))
                for key, m in template.modules.items()
            })
            save_checkpoint(adapter, ws.store / name)
        if not (ws.dense / name).is_dir():
            to_peft(ws.store / name, ws.dense / name)
    return ws


def _signs(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1


def adapter_sizes(ws: Workspace, name: str) -> dict:
    manifest = read_manifest(ws.store / name)
    dense_files = sum(f.stat().st_size for f in (ws.dense / name).iterdir() if f.is_file())
    return {"selora_disk_bytes": bytes_on_disk(ws.store / name), "dense_disk_bytes": dense_files,
            "dense_tensor_bytes": dense_lora_bytes(manifest, "float32"),
            "coefficients": manifest.num_coefficients()}


# ---------------------------------------------------------------- servers


def engine_options(args) -> tuple[list[str], list[str]]:
    """(options every system gets, LoRA options the dense and selora systems get), identical."""
    common = ["--served-model-name", BASE_NAME, "--max-num-seqs", str(args.max_num_seqs), "--dtype", args.dtype]
    if args.cpu:
        common += launch.CPU_OPTIONS
    common += shlex.split(args.vllm_args)
    lora = ["--enable-lora", "--max-lora-rank", str(supported_rank(args.rank)),
            "--max-loras", str(args.slots), "--max-cpu-loras", str(args.host_cache)]
    return common, lora


def start_system(system: str, ws: Workspace, args, logs: Path) -> launch.ServerProcess:
    common, lora = engine_options(args)
    model = ["--model", str(ws.model)]  # the filesystem resolver matches this exact string
    plain_env = {"VLLM_PLUGINS": "lora_filesystem_resolver"}  # keeps our own plugin out of plain vLLM
    if system == "dense":
        cmd = launch.vllm_command(model + common + lora)
        env = {**plain_env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_LORA_RESOLVER_CACHE_DIR": str(ws.dense)}
    elif system == "selora":
        cmd, env = launch.selora_serve_command(model + ["--adapters", str(ws.store)] + common + lora), {}
    elif system == "base":
        cmd, env = launch.vllm_command(model + common), plain_env
    elif system == "merged":
        merged = ws.store / f"n{args.sweep_list[0]}-a0"
        cmd = launch.selora_serve_command(["--merge", str(merged), "--merge-cache", str(ws.merge_cache)]
                                          + model + common + ["--served-model-name", MERGED_NAME])
        env = {}
    else:
        raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")
    print(f"starting {system} ...", file=sys.stderr, flush=True)
    return launch.start(cmd, logs / f"{system}.log", env=env, timeout=args.startup_timeout, name=system)


def tree_rss(server: launch.ServerProcess) -> tuple[int, int]:
    """Resident bytes of the server's API process, and of every process under it (engine, workers)."""
    root = psutil.Process(server.process.pid)
    below = 0
    for proc in root.children(recursive=True):
        try:
            below += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return root.memory_info().rss, below


def decode_times(server: launch.ServerProcess) -> list[float]:
    """Milliseconds of every SeLoRA decode the server's worker has logged so far."""
    return [float(t) for t in DECODE_LOG.findall(server.log.read_text(errors="replace"))]


# ---------------------------------------------------------------- requests


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int
    tpot: float | None = None  # (last token - first token) / (tokens - 1)


async def request(client, model: str, prompt: list[int], max_tokens: int) -> Sample:
    """One streamed completion; TTFT is the arrival of the first chunk that carries a choice."""
    start = time.perf_counter()
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True, "min_tokens": max_tokens},
    )
    arrivals, tokens = [], 0
    async for chunk in stream:
        if chunk.choices:
            arrivals.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    if not arrivals:
        raise RuntimeError(f"{model}: the stream carried no tokens")
    tpot = (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 else None
    return Sample(arrivals[0] - start, end - start, tokens, tpot)


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(count)]


def trace_models(names: list[str], count: int, popularity: str, seed: int) -> list[str]:
    """`count` model names drawn from `names`: uniformly or with Zipf popularity p_i ~ 1/i."""
    rng = random.Random(seed)
    if popularity == "uniform":
        return [rng.choice(names) for _ in range(count)]
    weights = [1.0 / (i + 1) for i in range(len(names))]
    return rng.choices(names, weights=weights, k=count)


async def run_trace(server, models: list[str], prompt_ids: list[list[int]], max_tokens: int, concurrency: int) -> dict:
    client = server.async_client()
    gate = asyncio.Semaphore(concurrency)

    async def bounded(model, prompt):
        async with gate:
            return await request(client, model, prompt, max_tokens)

    start = time.perf_counter()
    samples = await asyncio.gather(*(bounded(m, p) for m, p in zip(models, prompt_ids)))
    wall = time.perf_counter() - start
    await client.close()
    ttft = [s.ttft for s in samples]
    tpot = [s.tpot for s in samples if s.tpot is not None]
    return {
        "requests": len(samples), "distinct_models": len(set(models)), "wall_s": round(wall, 3),
        "requests_per_s": round(len(samples) / wall, 3),
        "output_tokens_per_s": round(sum(s.tokens for s in samples) / wall, 2),
        "ttft_p50_ms": ms(np.percentile(ttft, 50)), "ttft_p99_ms": ms(np.percentile(ttft, 99)),
        "itl_p50_ms": ms(np.percentile(tpot, 50)) if tpot else None,
    }


async def sequential_ttft(server, models: list[str], prompt_ids: list[list[int]]) -> list[float]:
    client = server.async_client()
    out = [(await request(client, m, p, 2)).ttft for m, p in zip(models, prompt_ids)]
    await client.close()
    return out


def ms(seconds: float) -> float:
    return round(1e3 * float(seconds), 2)


# ---------------------------------------------------------------- phases


def measure_memory(server, primer: str, names: list[str], args, seed: int) -> dict:
    """Host memory per cached adapter: RSS growth over loading `names`, after `primer`."""
    asyncio.run(sequential_ttft(server, [BASE_NAME, primer], prompts(2, args.prompt_len, args.vocab, seed)))
    time.sleep(1)  # let the first request's transient allocations settle
    before = tree_rss(server)
    asyncio.run(sequential_ttft(server, names, prompts(len(names), args.prompt_len, args.vocab, seed + 1)))
    time.sleep(1)
    after = tree_rss(server)
    m = max(1, len(names))
    return {"cached_adapters": len(names), "rss_before_bytes": sum(before), "rss_after_bytes": sum(after),
            "host_bytes_per_adapter": (sum(after) - sum(before)) // m,
            "api_bytes_per_adapter": (after[0] - before[0]) // m, "engine_bytes_per_adapter": (after[1] - before[1]) // m}


def measure_n(server, system: str, n: int, args, seed: int) -> dict:
    """Both traces, then the cold and warm probes, for the N adapters named n{N}-a*."""
    names = [f"n{n}-a{i}" for i in range(n)]
    out: dict = {"system": system, "n_adapters": n}
    before = len(decode_times(server))
    for k, pop in enumerate(POPULARITY):
        models = trace_models(names, args.requests, pop, seed + 10 * n + k)
        ids = prompts(args.requests, args.prompt_len, args.vocab, seed + 10 * n + k)
        out[pop] = asyncio.run(run_trace(server, models, ids, args.output_len, args.concurrency))
    cold = [f"n{n}-cold{j}" for j in range(args.probes)]
    ids = prompts(2 * args.probes, args.prompt_len, args.vocab, seed + 10 * n + 7)
    cold_ttft = asyncio.run(sequential_ttft(server, cold, ids[: args.probes]))
    warm_ttft = asyncio.run(sequential_ttft(server, cold, ids[args.probes:]))
    out["cold_ttft_ms"] = ms(np.median(cold_ttft))
    out["warm_ttft_ms"] = ms(np.median(warm_ttft))
    if system == "selora":
        times = decode_times(server)[before:]  # the trace's first touches and evictions, and the probes
        out["decodes"] = len(times)
        out["decode_ms_p50"] = round(float(np.median(times)), 2) if times else None
    return out


def measure_ceiling(server, system: str, model: str, args, seed: int) -> dict:
    asyncio.run(sequential_ttft(server, [model], prompts(1, args.prompt_len, args.vocab, seed + 4)))  # warm-up
    models = [model] * args.requests
    ids = prompts(args.requests, args.prompt_len, args.vocab, seed + 5)
    out = {"system": system, "uniform": asyncio.run(run_trace(server, models, ids, args.output_len, args.concurrency))}
    ids = prompts(args.probes, args.prompt_len, args.vocab, seed + 6)
    out["warm_ttft_ms"] = ms(np.median(asyncio.run(sequential_ttft(server, [model] * args.probes, ids))))
    return out


def compare(n: int, dense: dict, selora: dict, sizes: dict, memory: dict) -> dict:
    """One record per N: the selora/dense ratios and both systems' figures."""
    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    by_pop = {p: ratio(selora[p]["output_tokens_per_s"], dense[p]["output_tokens_per_s"]) for p in POPULARITY}
    host = {s: memory.get(s, {}).get("host_bytes_per_adapter") for s in ("dense", "selora")}
    return {
        "n_adapters": n,
        "throughput_ratio": min(by_pop.values()),
        "throughput_ratio_by_popularity": by_pop,
        "cold_ttft_ratio": ratio(selora["cold_ttft_ms"], dense["cold_ttft_ms"]),
        "warm_ttft_ratio": ratio(selora["warm_ttft_ms"], dense["warm_ttft_ms"]),
        "bytes_ratio": ratio(sizes["selora_disk_bytes"], sizes["dense_disk_bytes"]),
        "host_memory_ratio": ratio(host["selora"], host["dense"]),
        "spectral_host_ratio": ratio(sizes["selora_disk_bytes"], host["dense"]),
        "dense": dense, "selora": selora,
    }


# ---------------------------------------------------------------- output


def print_table(doc: dict) -> None:
    hw, cfg, sizes = doc["hardware"], doc["config"], doc["adapter"]
    print(f"hardware: {hw['cpu']}, {hw['cpu_count']} cores, torch {hw['torch']}" + (f", {hw['gpu']}" if "gpu" in hw else ""))
    print(f"model: {cfg['model_desc']}; adapters r={cfg['rank']} on {','.join(TARGETS)}, eta={cfg['eta']}, "
          f"{cfg['dtype']}; slots {cfg['slots']}, host cache {cfg['host_cache']}, max-num-seqs {cfg['max_num_seqs']}")
    print(f"trace: {cfg['requests']} requests per N and popularity, prompt {cfg['prompt_len']} + output "
          f"{cfg['output_len']} tokens, concurrency {cfg['concurrency']}; cold/warm: {cfg['probes']} sequential requests")
    print(f"per adapter: selora {sizes['selora_disk_bytes'] / 1024:.0f} KiB on disk, dense twin "
          f"{sizes['dense_disk_bytes'] / 1024:.0f} KiB ({sizes['dense_tensor_bytes'] / 1024:.0f} KiB of tensors)")
    for system, m in doc["memory"].items():
        print(f"host memory per cached adapter, {system}: {m['host_bytes_per_adapter'] / 1024:.0f} KiB "
              f"(RSS delta over {m['cached_adapters']} adapters; API server {m['api_bytes_per_adapter'] / 1024:.0f}, "
              f"engine {m['engine_bytes_per_adapter'] / 1024:.0f})")
    print(f"  in spectral form (the next step) a cached adapter would hold {sizes['selora_disk_bytes'] / 1024:.0f} KiB")
    header = ("N", "system", "pop", "req/s", "tok/s", "TTFT50", "TTFT99", "ITL50", "cold", "warm")
    print("\n" + " ".join(f"{h:>8}" for h in header) + "   (latencies in ms)")

    def row(n, system, pop, r, cold, warm):
        cells = (n, system, pop, r["requests_per_s"], r["output_tokens_per_s"], r["ttft_p50_ms"],
                 r["ttft_p99_ms"], r["itl_p50_ms"], cold, warm)
        print(" ".join(f"{c:>8.1f}" if isinstance(c, float) else f"{'' if c is None else c:>8}" for c in cells))

    for rec in doc["records"]:
        for system in ("dense", "selora"):
            s = rec[system]
            for k, pop in enumerate(POPULARITY):
                row(rec["n_adapters"] if k == 0 else "", system, pop, s[pop],
                    s["cold_ttft_ms"] if k == 0 else None, s["warm_ttft_ms"] if k == 0 else None)
    for system, c in doc["ceilings"].items():
        row("-", system, "-", c["uniform"], None, c["warm_ttft_ms"])
    print("\nselora / dense (throughput: the lower of the two traces; decodes: selora worker decodes per N, p50 ms):")
    print(" ".join(f"{h:>12}" for h in ("N", "throughput", "cold TTFT", "warm TTFT", "disk bytes", "host mem",
                                         "decodes", "decode ms")))
    for rec in doc["records"]:
        cells = (rec["n_adapters"], rec["throughput_ratio"], rec["cold_ttft_ratio"], rec["warm_ttft_ratio"],
                 rec["bytes_ratio"], rec["host_memory_ratio"], rec["selora"]["decodes"], rec["selora"]["decode_ms_p50"])
        print(" ".join(f"{'-' if c is None else c:>12}" for c in cells))
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in doc["targets"].items()))


def plot(doc: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ns = [r["n_adapters"] for r in doc["records"]]
    hw = doc["hardware"]
    where = f"{doc['config']['model_desc']}; {hw.get('gpu') or hw['cpu']}, {hw['cpu_count']} cores"
    paths = []
    for key, ylabel, fname in (("output_tokens_per_s", "output tokens / s", "serve_throughput.png"),
                               ("cold_ttft_ms", "cold-adapter TTFT (ms)", "serve_cold_ttft.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for system, color, marker in (("dense", "C0", "o"), ("selora", "C3", "s")):
            if key == "cold_ttft_ms":
                ax.plot(ns, [r[system][key] for r in doc["records"]], color=color, marker=marker, label=system)
                continue
            for pop, ls in zip(POPULARITY, ("-", "--")):
                ax.plot(ns, [r[system][pop][key] for r in doc["records"]], color=color, marker=marker, ls=ls,
                        label=f"{system} ({pop})")
        if key == "output_tokens_per_s":
            for system, c in doc["ceilings"].items():
                ax.axhline(c["uniform"][key], color="grey", ls=":" if system == "base" else "-.", label=f"{system} (ceiling)")
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("adapters (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(where, fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="1,8,64,256", help="comma-separated adapter counts N (default: %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="subset of %(default)s; dense and selora are required")
    p.add_argument("--model-size", choices=sorted(PRESETS), default="small",
                   help="local model preset: tiny = the demo model (hidden 128, 2 layers, r=8); small = hidden 512, "
                        "4 layers, r=16; medium = hidden 1024, 4 layers, r=16 (default: %(default)s)")
    p.add_argument("--model", metavar="DIR", type=Path,
                   help="a local Hugging Face model directory instead of a preset (adapters are built for it)")
    p.add_argument("--rank", type=int, help="LoRA rank r (default: the preset's)")
    p.add_argument("--eta", type=float, default=0.6, help="SeLoRA spectral density (default: %(default)s)")
    p.add_argument("--requests", type=int, default=64, help="requests per trace, whatever N (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent streams (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default: %(default)s)")
    p.add_argument("--output-len", type=int, default=16, help="output tokens, eos ignored (default: %(default)s)")
    p.add_argument("--probes", type=int, default=6,
                   help="cold and warm single requests per N; keep it above --slots (default: %(default)s)")
    p.add_argument("--mem-adapters", type=int, default=16,
                   help="adapters loaded for the host-memory measurement, < --host-cache (default: %(default)s)")
    p.add_argument("--slots", type=int, default=4, help="--max-loras for both systems (default: %(default)s)")
    p.add_argument("--host-cache", type=int, default=32, help="--max-cpu-loras for both systems (default: %(default)s)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="vLLM batch limit (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="engine dtype (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--vllm-args", default="", metavar="ARGS",
                   help="more vLLM options for every system, one shell-quoted string (e.g. on a GPU: "
                        "'--gpu-memory-utilization 0.85 --max-model-len 2048')")
    p.add_argument("--seed", type=int, default=0, help="seed of adapters, traces and prompts (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, help="keep the model, adapters and server logs here (in a sub-directory "
                   "per model, rank, eta and seed), reused by later runs (default: a temporary directory)")
    p.add_argument("--startup-timeout", type=float, default=launch.STARTUP_TIMEOUT_S, help="seconds per server start")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON document to PATH, atomically")
    p.add_argument("--plot-dir", type=Path, default=Path(__file__).parent / "results",
                   help="where the PNG plots go (default: benchmarks/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: tiny model, N=2, dense and selora only, 8 requests, 5 probes, 4 memory adapters")
    args = p.parse_args(argv)
    if args.quick:
        args.sweep, args.systems, args.model_size = "2", "dense,selora", "tiny"
        args.requests, args.probes, args.mem_adapters, args.concurrency = 8, 5, 4, 4
    args.sweep_list = sorted({int(n) for n in args.sweep.split(",") if n.strip()})
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in args.system_list if s not in SYSTEMS]
    if bad or not {"dense", "selora"} <= set(args.system_list):
        p.error(f"--systems {args.systems!r}: choose from {','.join(SYSTEMS)}, including dense and selora")
    if args.mem_adapters >= args.host_cache:
        p.error(f"--mem-adapters {args.mem_adapters} must be below --host-cache {args.host_cache} (one more is loaded first)")
    if args.probes <= args.slots:
        print(f"warning: --probes {args.probes} <= --slots {args.slots}: 'warm' adapters may still be in a slot",
              file=sys.stderr)
    args.cpu = on_cpu()
    args.dtype = args.dtype or ("float32" if args.cpu else "bfloat16")
    args.spec, preset_rank = PRESETS[args.model_size]
    args.rank = args.rank or preset_rank
    return args


def run(args, root: Path) -> dict:
    load = [round(x, 2) for x in psutil.getloadavg()]
    names = adapter_names(args.sweep_list, args.probes, args.mem_adapters)
    t0 = time.perf_counter()
    ws = build_workspace(root, args.spec, args.rank, args.eta, names, args.seed, model=args.model)
    build_s = time.perf_counter() - t0
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(str(ws.model))
    args.vocab = hf.vocab_size
    desc = (f"{args.model} " if args.model else f"'{args.model_size}' Llama ") + \
        f"(hidden {hf.hidden_size}, {hf.num_hidden_layers} layers, vocab {hf.vocab_size})"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    memory, results, ceilings = {}, {s: {} for s in ("dense", "selora")}, {}
    with ExitStack() as stack:
        servers = {}
        for system in ("dense", "selora"):
            servers[system] = start_system(system, ws, args, logs)
            stack.callback(launch.stop, servers[system])
        for system in ("dense", "selora"):
            memory[system] = measure_memory(servers[system], "mem-primer", [f"mem-{j}" for j in range(args.mem_adapters)],
                                            args, args.seed)
        for k, n in enumerate(args.sweep_list):
            order = ("dense", "selora") if k % 2 == 0 else ("selora", "dense")
            for system in order:
                print(f"N={n}: {system} ...", file=sys.stderr, flush=True)
                results[system][n] = measure_n(servers[system], system, n, args, args.seed)
    for system, model in (("base", BASE_NAME), ("merged", MERGED_NAME)):
        if system in args.system_list:
            server = start_system(system, ws, args, logs)
            try:
                ceilings[system] = measure_ceiling(server, system, model, args, args.seed)
            finally:
                launch.stop(server)
    sizes = adapter_sizes(ws, f"n{args.sweep_list[0]}-a0")
    records = [compare(n, results["dense"][n], results["selora"][n], sizes, memory) for n in args.sweep_list]
    targets = {
        "throughput>=0.97x": all(r["throughput_ratio"] >= 0.97 for r in records),
        "cold_ttft<=1.0x": all(r["cold_ttft_ratio"] <= 1.0 for r in records),
        "bytes<=0.42x": sizes["selora_disk_bytes"] <= 0.42 * sizes["dense_disk_bytes"],
    }
    config = {k: getattr(args, k) for k in ("model_size", "rank", "eta", "dtype", "slots", "host_cache", "max_num_seqs",
                                            "requests", "concurrency", "prompt_len", "output_len", "probes",
                                            "mem_adapters", "seed", "vllm_args")}
    config.update(model=str(args.model) if args.model else None, model_desc=desc, sweep=args.sweep_list,
                  systems=args.system_list, quick=args.quick, build_s=round(build_s, 1))
    return {"benchmark": "serve", "hardware": {**hardware(["cuda"] if not args.cpu else ["cpu"]),
                                               "load_average_at_start": load},
            "config": config, "adapter": sizes, "memory": memory, "records": records, "ceilings": ceilings,
            "targets": targets}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.work_dir:
        key = f"{args.model.name if args.model else args.model_size}-r{args.rank}-eta{args.eta}-seed{args.seed}"
        (args.work_dir / key).mkdir(parents=True, exist_ok=True)
        doc = run(args, args.work_dir / key)
    else:
        with tempfile.TemporaryDirectory(prefix="selora-bench-serve-") as tmp:
            doc = run(args, Path(tmp))
    if not args.no_plots:
        doc["plots"] = plot(doc, args.plot_dir)
    print_table(doc)
    if args.json:
        write_json(args.json, doc)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
