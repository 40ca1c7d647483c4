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

The dense and selora servers run side by side and the phases alternate between them, so drift in
the machine's load lands on both: each N runs its traces in K rounds (--rounds), each round on
its own fresh adapters (`n{N}-r{k}-a{i}`, so every round starts with all of its adapters on disk
only), the systems' order flipping every round (ABBA); the probe blocks alternate likewise.
Before the sweep, each server runs one discarded trace over 8 warm-up adapters (without it the
first N measured ran slower, selora-serve more so). Each system's figures pool the rounds
(throughput: total output tokens over total wall time); the throughput ratio is the median over
rounds of each round's selora/dense ratio, so one stall in one round (seen here: ~1 s, in either
system) does not decide it. Per server:

  memory   host memory per cached adapter (`benchmarks/hostmem.py`): process-tree RSS growth
           over loading M fresh adapters into the host cache (M < host cache), and for
           selora-serve the exact bytes its cache holds per adapter (from its /metrics): dense
           A and B, or only the coefficients with --host-cache-form spectral (then every
           activation decodes). Beside them: the dense tensor bytes plain vLLM caches.
  trace    R requests per round (a fixed total, not per adapter: at N=256 and R=128 most
           requests hit a cold adapter), model names drawn from N adapters uniformly and by Zipf popularity
           (p_i ~ 1/i), seeded; fixed prompt length (distinct random token ids per request, so
           prefix caching does not help) and output length (ignore_eos); C concurrent streams
           (openai AsyncOpenAI, streaming). requests/s and output tokens/s over the wall time;
           TTFT p50/p99; inter-token latency p50 over requests, each
           request's (last token - first token) / (tokens - 1): vLLM merges the tokens of a
           stream into one chunk when the client lags, so gaps between chunks would undercount.
  cold     P sequential requests (concurrency 1), each to a never-requested adapter: the TTFT
           includes resolving, loading (selora: validating and decoding) and the first token.
           In four blocks per phase, A B B A over the two halves of the probes, each after a
           1 s pause and one untimed base-model request (the first block after a trace ran
           slower whichever system it was).
  warm     the same P adapters again, in the same order: with P > slots each is in the host cache
           but no longer in a slot, so the TTFT includes activation but no load.

Ratios are selora over dense. Before each round and before the probes, the files of the adapters
they use are dropped from the OS page cache (`benchmarks/pagecache.py`), so "cold" means
on disk only, as in production; `--page-cache-warm` keeps them cached (then disk latency is not
measured). Runs on CPU with a local Llama-shaped model built by
`selora_serve.tiny` (presets below), or `--model-size real`: SmolLM2-135M-Instruct, exported once
by `selora_serve.models` into the work directory (r = 32, the real-model figures in the README);
`--model DIR` and `--vllm-args` for any other local model, or a GPU.

Prints a table (hardware and sizes stated), writes PNG plots to --plot-dir and, with --json PATH,
the JSON document atomically; the last stdout line is the same JSON document.
Run from the repository root:  python benchmarks/serve.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from selora_serve.vllm_ext.host_cache import HOST_CACHE_FORMS

try:  # sibling modules: importable as benchmarks.* from the root, as plain modules from here
    from benchmarks import pagecache
    from benchmarks.decode import hardware
    from benchmarks.hostmem import measure_memory
    from benchmarks.serve_report import POPULARITY, TARGETS, plot, print_table
    from benchmarks.traffic import ms, prompts, run_trace, sequential_ttft, summarise, trace_models
except ImportError:
    import pagecache
    from decode import hardware
    from hostmem import measure_memory
    from serve_report import POPULARITY, TARGETS, plot, print_table
    from traffic import ms, prompts, run_trace, sequential_ttft, summarise, trace_models

PRESETS = {  # (model shape, LoRA rank); head_dim 32 or 64, both supported by vLLM's CPU attention
    "tiny": (TinySpec(), 8),  # the demo model: hidden 128, 2 layers
    "small": (TinySpec(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=2), 16),
    "medium": (TinySpec(hidden_size=1024, intermediate_size=2752, num_hidden_layers=4,
                        num_attention_heads=16, num_key_value_heads=4), 16),
}
REAL, REAL_RANK = "real", 32  # the real-model preset: SmolLM2-135M-Instruct (selora_serve.models)
SYSTEMS = ("dense", "selora", "base", "merged")
BASE_NAME, MERGED_NAME = "base", "merged"
SETTLE_S = 1.0  # idle seconds before each probe block
WARMUP_ADAPTERS = 8  # a discarded trace over these first: the first N measured ran slower otherwise
# selora_serve.vllm_ext.loading logs one line per decode, with its time.
DECODE_LOG = re.compile(r"decoded SeLoRA adapter .* in ([0-9.]+) ms")
# ... and its resolver one line per adapter it snapshots (and verifies) in the API process.
RESOLVE_LOG = re.compile(r"snapshot of adapter .* in ([0-9.]+) ms, verified in ([0-9.]+) ms")


# ---------------------------------------------------------------- adapters


@dataclass
class Workspace:
    model: Path
    store: Path  # SeLoRA checkpoints, one directory per adapter name
    dense: Path  # their PEFT twins, same names
    merge_cache: Path


def trace_names(n: int, rnd: int) -> list[str]:
    return [f"n{n}-r{rnd}-a{i}" for i in range(n)]


def probe_names(n: int, probes: int) -> list[str]:
    return [f"n{n}-cold{j}" for j in range(probes)]


def warmup_names() -> list[str]:
    return [f"warmup-{j}" for j in range(WARMUP_ADAPTERS)]


def adapter_names(sweep: list[int], probes: int, mem: int, rounds: int) -> list[str]:
    names = ["mem-primer"] + [f"mem-{j}" for j in range(mem)] + warmup_names()
    for n in sweep:
        names += [a for r in range(rounds) for a in trace_names(n, r)] + probe_names(n, probes)
    return names


def preset(name: str) -> tuple[TinySpec | None, int]:
    """(model shape, LoRA rank) of a --model-size preset; the real model's shape is its own (None)."""
    return (None, REAL_RANK) if name == REAL else PRESETS[name]


def real_model(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a model directory `cache`/smollm2, exported on first use (~20 s);
    exits with the install hint if the 'real' extra is missing."""
    from selora_serve.models import MissingExtraError, export

    try:
        return export("smollm2", cache / "smollm2", log=lambda line: print(line, file=sys.stderr))
    except (MissingExtraError, FileExistsError) as exc:
        raise SystemExit(f"the real-model preset: {exc}") from None


def build_workspace(root: Path, spec: TinySpec | None, rank: int, eta: float, names: list[str], seed: int,
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


def adapter_sizes(ws: Workspace, name: str, dtype: str) -> dict:
    """Bytes per adapter: on disk in both forms, and the dense tensors at the engine's `dtype`."""
    manifest = read_manifest(ws.store / name)
    dense_files = sum(f.stat().st_size for f in (ws.dense / name).iterdir() if f.is_file())
    return {"selora_disk_bytes": bytes_on_disk(ws.store / name), "dense_disk_bytes": dense_files,
            "dense_tensor_bytes": dense_lora_bytes(manifest, dtype),
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
        form = ["--host-cache-form", args.host_cache_form]
        cmd, env = launch.selora_serve_command(model + ["--adapters", str(ws.store)] + form + common + lora), {}
    elif system == "base":
        cmd, env = launch.vllm_command(model + common), plain_env
    elif system == "merged":
        merged = ws.store / trace_names(args.sweep_list[0], 0)[0]
        cmd = launch.selora_serve_command(["--merge", str(merged), "--merge-cache", str(ws.merge_cache)]
                                          + model + common + ["--served-model-name", MERGED_NAME])
        env = {}
    else:
        raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")
    print(f"starting {system} ...", file=sys.stderr, flush=True)
    return launch.start(cmd, logs / f"{system}.log", env=env, timeout=args.startup_timeout, name=system)


def logged_ms(server: launch.ServerProcess) -> tuple[list[float], list[tuple[float, float]]]:
    """From the server's log so far: the milliseconds of every SeLoRA decode (worker), and the
    (snapshot, verification) milliseconds of every adapter resolved (API process)."""
    text = server.log.read_text(errors="replace")
    return ([float(t) for t in DECODE_LOG.findall(text)],
            [(float(a), float(b)) for a, b in RESOLVE_LOG.findall(text)])


# ---------------------------------------------------------------- phases


def measure_n(servers: dict, ws: Workspace, n: int, args, seed: int) -> dict[str, dict]:
    """For N adapters, per system: both traces over `args.rounds` rounds, then the cold and warm
    probes.

    Round r uses its own adapters (n{N}-r{r}-a*), their files first dropped from the page cache,
    so every round starts cold; the systems alternate within each round and their order flips
    every round and every N (ABBA), so drift in the machine's load lands on both. The probes
    run in A B B A blocks over their two halves: cold from the first round's order, warm from
    the reverse.
    """
    dirs = {"dense": ws.dense, "selora": ws.store}
    runs = {s: {pop: [] for pop in POPULARITY} for s in dirs}
    distinct = {pop: [] for pop in POPULARITY}
    decodes_before, resolves_before = map(len, logged_ms(servers["selora"]))
    for rnd in range(args.rounds):
        names = trace_names(n, rnd)
        traces = {pop: trace_models(names, args.requests, pop, seed + 10 * n + k + 1000 * rnd)
                  for k, pop in enumerate(POPULARITY)}
        for pop in POPULARITY:
            distinct[pop].append(len(set(traces[pop])))
        order = ("dense", "selora") if (rnd + n) % 2 == 0 else ("selora", "dense")
        for system in order:
            print(f"N={n} round {rnd + 1}/{args.rounds}: {system} ...", file=sys.stderr, flush=True)
            if not args.page_cache_warm:
                pagecache.evict(dirs[system] / name for name in names)
            for k, pop in enumerate(POPULARITY):
                ids = prompts(args.requests, args.prompt_len, args.vocab, seed + 10 * n + k + 1000 * rnd)
                runs[system][pop].append(asyncio.run(run_trace(servers[system], traces[pop], ids, args.output_len,
                                                               args.concurrency)))
    probes = probe_names(n, args.probes)
    if not args.page_cache_warm:
        pagecache.evict(dirs[system] / name for system in dirs for name in probes)
    ids = prompts(2 * args.probes, args.prompt_len, args.vocab, seed + 10 * n + 7)
    ttft: dict[str, dict[str, list[float]]] = {s: {} for s in dirs}
    # One system at a time, one client per block: requests alternating between the two servers
    # came out slower and far noisier (each server's idle work lands on the other's request).
    # Each phase runs in four blocks, A B B A over the two halves of the probes, each after a
    # pause and an untimed base-model request: the first block after the traces ran slower
    # (whichever system it was), which decided the cold ratio by the order alone.
    first = ("dense", "selora") if n % 2 == 0 else ("selora", "dense")  # round 0's order
    halves = (slice(0, args.probes // 2), slice(args.probes // 2, args.probes))
    for phase, offset, (a, b) in (("cold", 0, first), ("warm", args.probes, first[::-1])):
        for system, part in ((a, halves[0]), (b, halves[0]), (b, halves[1]), (a, halves[1])):
            time.sleep(SETTLE_S)
            got = asyncio.run(sequential_ttft(servers[system], probes[part],
                                              ids[offset:offset + args.probes][part], warmup=BASE_NAME))
            ttft[system].setdefault(phase, []).extend(got)
    decodes, resolves = logged_ms(servers["selora"])
    decodes = decodes[decodes_before:]  # first touches, evictions, probes
    out = {}
    for system in dirs:
        out[system] = {"system": system, "n_adapters": n,
                       **{pop: summarise(runs[system][pop], distinct[pop]) for pop in POPULARITY},
                       "cold_ttft_ms": ms(np.median(ttft[system]["cold"])),
                       "warm_ttft_ms": ms(np.median(ttft[system]["warm"])),
                       "probe_ttfts_ms": {phase: [ms(t) for t in ttft[system][phase]] for phase in ("cold", "warm")}}
    out["selora"]["decodes"] = len(decodes)
    out["selora"]["decode_ms_p50"] = round(float(np.median(decodes)), 2) if decodes else None
    resolves = np.array(resolves[resolves_before:]).reshape(-1, 2)
    for k, key in enumerate(("snapshot_ms_p50", "verify_ms_p50")):  # API process, per first request
        out["selora"][key] = round(float(np.median(resolves[:, k])), 2) if len(resolves) else None
    return out


def measure_ceiling(server, system: str, model: str, args, seed: int) -> dict:
    # Warm-up at the trace's concurrency: the first batches of each size cost extra on a fresh
    # engine (the dense and selora servers got theirs from the warm-up trace before the sweep).
    warm = 4 * args.concurrency
    asyncio.run(run_trace(server, [model] * warm, prompts(warm, args.prompt_len, args.vocab, seed + 4),
                          args.output_len, args.concurrency))
    models = [model] * args.requests
    ids = prompts(args.requests, args.prompt_len, args.vocab, seed + 5)
    run = asyncio.run(run_trace(server, models, ids, args.output_len, args.concurrency))
    out = {"system": system, "uniform": summarise([run], [1])}
    ids = prompts(args.probes, args.prompt_len, args.vocab, seed + 6)
    out["warm_ttft_ms"] = ms(np.median(asyncio.run(sequential_ttft(server, [model] * args.probes, ids))))
    return out


def compare(n: int, dense: dict, selora: dict, sizes: dict, memory: dict) -> dict:
    """One record per N: the selora/dense ratios and both systems' figures."""
    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    def round_ratio(pop):  # rounds are paired (same adapters' trace, ABBA order): median of their ratios
        pairs = zip(selora[pop]["round_output_tokens_per_s"], dense[pop]["round_output_tokens_per_s"])
        return round(float(np.median([a / b for a, b in pairs])), 3)

    by_pop = {p: round_ratio(p) for p in POPULARITY}
    host = {s: memory.get(s, {}).get("host_bytes_per_adapter") for s in ("dense", "selora")}
    cache = memory.get("selora", {}).get("cache_bytes_per_adapter")
    return {
        "n_adapters": n,
        "throughput_ratio": min(by_pop.values()),
        "throughput_ratio_by_popularity": by_pop,
        "cold_ttft_ratio": ratio(selora["cold_ttft_ms"], dense["cold_ttft_ms"]),
        "warm_ttft_ratio": ratio(selora["warm_ttft_ms"], dense["warm_ttft_ms"]),
        "bytes_ratio": ratio(sizes["selora_disk_bytes"], sizes["dense_disk_bytes"]),
        "host_memory_ratio": ratio(host["selora"], host["dense"]),
        "cache_bytes_ratio": ratio(cache, sizes["dense_tensor_bytes"]),
        "dense": dense, "selora": selora,
    }


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="1,8,64,256", help="comma-separated adapter counts N (default: %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="subset of %(default)s; dense and selora are required")
    p.add_argument("--model-size", choices=sorted(PRESETS) + [REAL], default="small",
                   help="model preset: tiny = the demo model (hidden 128, 2 layers, r=8); small = hidden 512, "
                        "4 layers, r=16; medium = hidden 1024, 4 layers, r=16; real = SmolLM2-135M-Instruct "
                        f"(hidden 576, 30 layers, r={REAL_RANK}; needs the 'real' extra) (default: %(default)s)")
    p.add_argument("--model", metavar="DIR", type=Path,
                   help="a local Hugging Face model directory instead of a preset (adapters are built for it)")
    p.add_argument("--rank", type=int, help="LoRA rank r (default: the preset's)")
    p.add_argument("--eta", type=float, default=0.6, help="SeLoRA spectral density (default: %(default)s)")
    p.add_argument("--requests", type=int, default=128,
                   help="requests per trace and round, whatever N (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of both traces per N and system, each on fresh adapters (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent streams (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default: %(default)s)")
    p.add_argument("--output-len", type=int, default=16, help="output tokens, eos ignored (default: %(default)s)")
    p.add_argument("--probes", type=int, default=12,
                   help="cold and warm single requests per N; keep it above --slots (default: %(default)s)")
    p.add_argument("--mem-adapters", type=int, default=16,
                   help="adapters loaded for the host-memory measurement, < --host-cache (default: %(default)s)")
    p.add_argument("--slots", type=int, default=4, help="--max-loras for both systems (default: %(default)s)")
    p.add_argument("--host-cache", type=int, default=32, help="--max-cpu-loras for both systems (default: %(default)s)")
    p.add_argument("--host-cache-form", choices=HOST_CACHE_FORMS, default="dense",
                   help="selora-serve's --host-cache-form: dense holds decoded A and B like plain vLLM, spectral "
                        "only the coefficients, decoded on each activation (default: %(default)s)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="vLLM batch limit (default: %(default)s)")
    p.add_argument("--dtype", default=None, help="engine dtype (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--vllm-args", default="", metavar="ARGS",
                   help="more vLLM options for every system, one shell-quoted string (e.g. on a GPU: "
                        "'--gpu-memory-utilization 0.85 --max-model-len 2048')")
    p.add_argument("--page-cache-warm", action="store_true",
                   help="do not drop the adapters' files from the page cache before each round and the "
                        "probes: cold loads then read memory, not disk")
    p.add_argument("--seed", type=int, default=0, help="seed of adapters, traces and prompts (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, help="keep the model, adapters and server logs here (in a sub-directory "
                   "per model, rank, eta and seed), reused by later runs (default: a temporary directory)")
    p.add_argument("--startup-timeout", type=float, default=launch.STARTUP_TIMEOUT_S, help="seconds per server start")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON document to PATH, atomically")
    p.add_argument("--plot-dir", type=Path, default=Path(__file__).parent / "results",
                   help="where the PNG plots go (default: benchmarks/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: tiny model, N=2, dense and selora only, 8 requests, 1 round, 5 probes, "
                        "4 memory adapters")
    args = p.parse_args(argv)
    if args.quick:
        args.sweep, args.systems, args.model_size = "2", "dense,selora", "tiny"
        args.requests, args.rounds, args.probes, args.mem_adapters, args.concurrency = 8, 1, 5, 4, 4
    args.sweep_list = sorted({int(n) for n in args.sweep.split(",") if n.strip()})
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in args.system_list if s not in SYSTEMS]
    if bad or not {"dense", "selora"} <= set(args.system_list):
        p.error(f"--systems {args.systems!r}: choose from {','.join(SYSTEMS)}, including dense and selora")
    if args.rounds < 1 or args.requests < 1:
        p.error("--rounds and --requests must be at least 1")
    if args.mem_adapters >= args.host_cache:
        p.error(f"--mem-adapters {args.mem_adapters} must be below --host-cache {args.host_cache} (one more is loaded first)")
    if args.probes <= args.slots:
        print(f"warning: --probes {args.probes} <= --slots {args.slots}: 'warm' adapters may still be in a slot",
              file=sys.stderr)
    args.cpu = on_cpu()
    args.dtype = args.dtype or ("float32" if args.cpu else "bfloat16")
    if args.model is not None and not (args.model / "config.json").is_file():
        p.error(f"--model {args.model}: not a Hugging Face model directory (no config.json)")
    args.spec, preset_rank = preset(args.model_size)
    args.rank = args.rank or preset_rank
    return args


def run(args, root: Path) -> dict:
    load = [round(x, 2) for x in psutil.getloadavg()]
    names = adapter_names(args.sweep_list, args.probes, args.mem_adapters, args.rounds)
    t0 = time.perf_counter()
    if args.model is None and args.model_size == REAL:
        args.model = real_model(root)
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
            memory[system] = measure_memory(servers[system], BASE_NAME, "mem-primer",
                                            [f"mem-{j}" for j in range(args.mem_adapters)], args.prompt_len,
                                            args.vocab, args.seed)
        for system in ("dense", "selora"):  # discarded: first batches of each size, first loads
            print(f"warm-up: {system} ...", file=sys.stderr, flush=True)
            models = trace_models(warmup_names(), args.requests, "uniform", args.seed + 5)
            asyncio.run(run_trace(servers[system], models, prompts(args.requests, args.prompt_len, args.vocab,
                                                                   args.seed + 5), args.output_len, args.concurrency))
        for n in args.sweep_list:
            for system, result in measure_n(servers, ws, n, args, args.seed).items():
                results[system][n] = result
    for system, model in (("base", BASE_NAME), ("merged", MERGED_NAME)):
        if system in args.system_list:
            server = start_system(system, ws, args, logs)
            try:
                ceilings[system] = measure_ceiling(server, system, model, args, args.seed)
            finally:
                launch.stop(server)
    sizes = adapter_sizes(ws, trace_names(args.sweep_list[0], 0)[0], args.dtype)
    records = [compare(n, results["dense"][n], results["selora"][n], sizes, memory) for n in args.sweep_list]
    targets = {
        "throughput>=0.97x": all(r["throughput_ratio"] >= 0.97 for r in records),
        "cold_ttft<=1.0x": all(r["cold_ttft_ratio"] <= 1.0 for r in records),
        "bytes<=0.42x": sizes["selora_disk_bytes"] <= 0.42 * sizes["dense_disk_bytes"],
    }
    config = {k: getattr(args, k) for k in ("model_size", "rank", "eta", "dtype", "slots", "host_cache", "max_num_seqs",
                                            "requests", "rounds", "concurrency", "prompt_len", "output_len", "probes",
                                            "mem_adapters", "seed", "vllm_args", "page_cache_warm",
                                            "host_cache_form")}
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
