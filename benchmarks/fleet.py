"""Scale-out on Ray Serve LLM: the dense PEFT twins through Ray's own downloader against the SeLoRA
checkpoints through selora-serve's app, same Ray, same engine options, same bucket.

    python benchmarks/fleet.py                               # R = 1, 2; unthrottled and 100 MB/s
    python benchmarks/fleet.py --replicas 1 --settings unthrottled --quick   # a smoke run (tiny model)

Both systems are Ray Serve LLM apps on a loopback-only Ray cluster (`selora_serve.ray.loopback`),
one fresh cluster per run (every adapter cold, both caches empty):

  dense    Ray's stock app (`build_openai_app`, `LLMServer`): LoRA adapters from
           `dynamic_lora_loading_path = s3://bench/dense`, the PEFT twins (`selora-convert to-peft`),
           downloaded by Ray's own loader;
  selora   `selora_serve.ray:build_app` with `adapters = s3://bench/selora`: the SeLoRA checkpoints,
           fetched into the adapter cache, verified and decoded in each replica's engine.

The engine options are the same object for both (`selora_serve.ray.app.llm_config`: the planner's
rank, slots and host cache, float32 on CPU), as are the replicas' logical CPUs. The bucket is moto
on 127.0.0.1 behind a counting proxy (`FaultProxy.sent`: the bytes the bucket sent, i.e. its
egress); with root, the run happens inside a network namespace whose loopback `tc` throttles the
proxy's responses (the 100MB/s setting), as `benchmarks/coldfetch.py` does.

Traffic: N adapters of the real model (SmolLM2-135M-Instruct, r = 32 on q, k, v, up, down, as
`benchmarks/serve.py` builds them), Zipf popularity (p_i ~ 1/i), streamed completions at a fixed
concurrency. Per run: bytes fetched from the bucket, adapter loads per replica (vLLM's "Loaded new
LoRA adapter" lines in each replica's log), cold TTFT (each adapter's first request) p50/p95, warm
TTFT p50, output tokens/s, failed requests, and each replica's RSS (its process and children).

Resumable: each finished run is appended to --results (JSON lines) and a rerun skips the runs
already there; the table and --json are made from every record there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.coldfetch import netns_problem, shape  # noqa: E402
from benchmarks.decode import hardware  # noqa: E402
from benchmarks.serve import REAL_RANK, build_workspace, real_model  # noqa: E402
from benchmarks.traffic import ms, prompts, request, trace_models  # noqa: E402
from selora_serve.atomic import write_json  # noqa: E402

BUCKET = "bench"
BASE_ID = "smollm2"
SETTINGS = {"unthrottled": None, "100MB/s": 800}  # mbit on the wire
SYSTEMS = ("dense", "selora")
RAY_LORA_CACHE = "/tmp/ray/llm/lora/cache"  # Ray's LoraModelLoader default lora_root
LOADED = re.compile(r"Loaded new LoRA adapter: name '([^']+)'")
TARGETS = {"bytes_fetched": 0.42, "cold_ttft_p50_100MB/s": 0.8, "output_tokens_per_s": 0.97}


# ---------------------------------------------------------------- one run (inside the namespace)


def _apps(model: Path, replicas: int, args, cache_dir: Path):
    """{system: Serve application} with one engine configuration for both."""
    from ray.serve.llm import LoraConfig, build_openai_app

    from selora_serve.ray import build_app
    from selora_serve.ray.app import llm_config
    from selora_serve.ray.config import AppConfig

    common = {"model": str(model), "model_id": BASE_ID, "num_replicas": replicas, "cpus_per_replica": 1,
              "max_loras": args.slots, "max_cpu_loras": args.host_cache, "adapter_cache_dir": str(cache_dir),
              "engine_args": f"--max-model-len 512 --enforce-eager --kv-cache-memory-bytes {args.kv_cache}"}
    selora_args = {**common, "adapters": f"s3://{BUCKET}/selora"}
    config, _ = llm_config(AppConfig.from_args(selora_args))
    dense = config.model_copy(deep=True, update={
        "server_cls": None,
        "lora_config": LoraConfig(dynamic_lora_loading_path=f"s3://{BUCKET}/dense",
                                  max_num_adapters_per_replica=args.host_cache),
    })
    return {"dense": lambda: build_openai_app({"llm_configs": [dense]}), "selora": lambda: build_app(selora_args)}


def _replica_rss() -> dict[str, int]:
    """{pid: RSS bytes of the model replica process and its children (vLLM's engine processes)}."""
    import psutil

    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if "LLMServer" not in " ".join(proc.cmdline()):
                continue
            out[str(proc.pid)] = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return out


def _loads_per_replica(session: Path) -> dict[str, int]:
    """{log file's pid: vLLM adapter loads} from the Ray session's worker logs."""
    loads: dict[str, int] = {}
    for log in (session / "logs").glob("worker-*"):
        count = len(LOADED.findall(log.read_text(errors="replace")))
        if count:
            pid = log.stem.rsplit("-", 1)[-1]
            loads[pid] = loads.get(pid, 0) + count
    return loads


async def _trace(url: str, models: list[str], prompt_ids: list[list[int]], max_tokens: int, concurrency: int):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    first_seen: set[str] = set()

    async def one(model, prompt):
        cold = model not in first_seen
        first_seen.add(model)
        async with gate:
            try:
                return cold, await request(client, model, prompt, max_tokens)
            except Exception as exc:  # noqa: BLE001 - a failed request is a result here
                return cold, f"{type(exc).__name__}: {str(exc)[:200]}"

    start = time.perf_counter()
    out = await asyncio.gather(*(one(m, p) for m, p in zip(models, prompt_ids)))
    wall = time.perf_counter() - start
    await client.close()
    return out, wall


def measure(system: str, replicas: int, setting: str, args, s3, model: Path, work: Path) -> dict:
    import numpy as np
    import ray
    from ray import serve

    from selora_serve.ray.loopback import loopback_cluster
    from selora_serve.store.s3local import _free_port

    if args.shape_port is not None:
        shape(args.shape_port, SETTINGS[setting])
    cache = Path(tempfile.mkdtemp(prefix="fleet-cache-", dir=work))  # selora: an empty adapter cache
    shutil.rmtree(RAY_LORA_CACHE, ignore_errors=True)  # dense: Ray's own download directory, emptied too
    names = [f"a{i}" for i in range(args.adapters)]
    models = [f"{BASE_ID}:{n}" for n in trace_models(names, args.requests, "zipf", seed=1)]
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    prompt_ids = prompts(args.requests, args.prompt_len, vocab, seed=2)
    with loopback_cluster(num_cpus=2 + 2 * replicas, http_port=_free_port()) as url:
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        serve.run(_apps(model, replicas, args, cache)[system](), name="fleet", route_prefix="/")
        before = s3.proxy.sent
        results, wall = asyncio.run(_trace(url, models, prompt_ids, args.max_tokens, args.concurrency))
        fetched = s3.proxy.sent - before
        rss = _replica_rss()
        loads = _loads_per_replica(session)
    ok = [(cold, r) for cold, r in results if not isinstance(r, str)]
    cold = [r.ttft for c, r in ok if c]
    warm = [r.ttft for c, r in ok if not c]
    failed = [r for _, r in results if isinstance(r, str)]
    return {
        "system": system, "replicas": replicas, "setting": setting, "adapters": args.adapters,
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "bytes_fetched": fetched, "loads_per_replica": sorted(loads.values()), "loads_total": sum(loads.values()),
        "distinct_adapters": len(set(models)),
        "cold_ttft_p50_ms": ms(np.percentile(cold, 50)) if cold else None,
        "cold_ttft_p95_ms": ms(np.percentile(cold, 95)) if cold else None,
        "warm_ttft_p50_ms": ms(np.percentile(warm, 50)) if warm else None,
        "output_tokens_per_s": round(sum(r.tokens for _, r in ok) / wall, 2), "wall_s": round(wall, 1),
        "failed": len(failed), "failures": sorted(set(failed))[:5],
        "replica_rss_bytes": sorted(rss.values()),
    }


def _done(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def inside(args) -> None:
    """Start the bucket, upload both forms, run every missing (setting, replicas, system)."""
    from selora_serve.store.s3local import FaultProxy, S3Server, endpoint_env

    work, results = Path(args.work_dir), Path(args.results)
    ws_store, ws_dense = Path(args.real_dir) / "selora", Path(args.real_dir) / "dense"
    if args.shape:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # a new namespace's loopback is down
    with S3Server(log=work / "moto.log") as s3, FaultProxy(s3.port) as proxy:
        s3.proxy = proxy
        args.shape_port = proxy.port if args.shape else None
        if args.shape_port is not None:
            shape(args.shape_port, None)
        os.environ.update(endpoint_env(proxy.url))
        s3.create_bucket(BUCKET)
        for i in range(args.adapters):
            s3.upload_dir(BUCKET, f"selora/a{i}", ws_store / f"a{i}")
            s3.upload_dir(BUCKET, f"dense/a{i}", ws_dense / f"a{i}")
        done = {(r["setting"], r["replicas"], r["system"]) for r in _done(results)
                if r["adapters"] == args.adapters and r["requests"] == args.requests}
        failures = 0
        for setting in args.settings:
            for replicas in args.replicas:
                for system in args.systems:
                    if (setting, replicas, system) in done:
                        print(f"skip {system} R={replicas} {setting}: in {results}", flush=True)
                        continue
                    record = None
                    for attempt in (1, 2):  # a fresh cluster may lose a race for its free port: once more
                        print(f"run {system} R={replicas} {setting} (attempt {attempt}) ...", flush=True)
                        try:
                            record = measure(system, replicas, setting, args, s3, Path(args.model), work)
                            break
                        except Exception as exc:  # noqa: BLE001 - the other runs go on; a rerun retries this
                            print(f"failed: {system} R={replicas} {setting}: {type(exc).__name__}: {exc}", flush=True)
                    if record is None:
                        failures += 1
                        continue
                    with results.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
        if failures:
            raise SystemExit(f"{failures} run(s) failed twice; rerun to retry them")


# ---------------------------------------------------------------- report


def table(records: list[dict]) -> tuple[str, list[dict]]:
    keys = ("bytes_fetched", "loads_total", "cold_ttft_p50_ms", "cold_ttft_p95_ms", "warm_ttft_p50_ms",
            "output_tokens_per_s", "failed")
    lines = [f"{'setting':<12}{'R':>2}  {'system':<7}" + "".join(f"{k:>20}" for k in keys) + f"{'replica RSS MB':>22}"]
    ratios = []
    by = {(r["setting"], r["replicas"], r["system"]): r for r in records}
    for (setting, replicas, system), r in sorted(by.items()):
        rss = "/".join(str(round(b / 2**20)) for b in r["replica_rss_bytes"])
        lines.append(f"{setting:<12}{replicas:>2}  {system:<7}" + "".join(f"{str(r[k]):>20}" for k in keys) + f"{rss:>22}")
        if system == "selora" and (setting, replicas, "dense") in by:
            d = by[(setting, replicas, "dense")]
            ratio = {"setting": setting, "replicas": replicas}
            for k in ("bytes_fetched", "cold_ttft_p50_ms", "cold_ttft_p95_ms", "warm_ttft_p50_ms", "output_tokens_per_s"):
                ratio[k] = round(r[k] / d[k], 3) if r[k] and d[k] else None
            ratio["replica_rss"] = round(sum(r["replica_rss_bytes"]) / sum(d["replica_rss_bytes"]), 3) \
                if d["replica_rss_bytes"] and r["replica_rss_bytes"] else None
            ratios.append(ratio)
    lines.append("")
    lines.append("selora / dense (targets: bytes <= 0.42, cold TTFT p50 <= 0.8 at 100MB/s, throughput >= 0.97):")
    for q in ratios:
        lines.append(f"  {q['setting']:<12} R={q['replicas']}: " + ", ".join(f"{k} {v}" for k, v in q.items()
                                                                           if k not in ("setting", "replicas")))
    return "\n".join(lines), ratios


# ---------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="1,2", help="comma-separated replica counts R (default: %(default)s)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: dense, selora (default: both)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="link settings (default: %(default)s)")
    p.add_argument("--adapters", type=int, default=64, help="N adapters in the bucket (default: %(default)s)")
    p.add_argument("--requests", type=int, default=128, help="requests per run, Zipf over the N (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per completion (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default: %(default)s)")
    p.add_argument("--slots", type=int, default=8, help="vLLM LoRA slots per replica (default: %(default)s)")
    p.add_argument("--host-cache", type=int, default=16,
                   help="adapters per replica: vLLM's host cache and Ray's multiplex LRU (default: %(default)s)")
    p.add_argument("--kv-cache", default="1G", help="KV cache per replica (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke-sized: the tiny model, r = 8, 6 adapters, 12 requests")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "selora-fleet",
                   help="model, adapters and caches (kept for reruns; default: %(default)s)")
    p.add_argument("--results", type=Path, default=HERE / "results" / "fleet.jsonl",
                   help="records, one JSON line per run, appended (default: %(default)s)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "fleet.json", help="the summary (default: %(default)s)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--real-dir", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.replicas = [int(r) for r in args.replicas.split(",")]
    args.systems = [s for s in args.systems.split(",") if s]
    args.settings = [s for s in args.settings.split(",") if s]
    for s in args.settings:
        if s not in SETTINGS:
            p.error(f"--settings {s}: expected one of {', '.join(SETTINGS)}")
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"--systems {s}: expected dense or selora")
    if args.quick:
        args.adapters, args.requests, args.max_tokens = min(args.adapters, 6), min(args.requests, 12), 4
    if args.inside:
        from selora_serve.ray import loopback  # noqa: F401 - before anything imports Ray

        return inside(args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    names = [f"a{i}" for i in range(args.adapters)]
    real_dir = args.work_dir / ("quick" if args.quick else "real")
    if args.quick:
        from selora_serve.tiny import TinySpec

        ws = build_workspace(real_dir, TinySpec(), 8, 0.6, names, seed=0)
    else:
        ws = build_workspace(real_dir, None, REAL_RANK, 0.6, names, seed=0, model=real_model(args.work_dir))
    problem = netns_problem()
    settings = args.settings if problem is None else [s for s in args.settings if SETTINGS[s] is None]
    child = [sys.executable, str(Path(__file__).resolve()), "--inside", "--work-dir", str(args.work_dir),
             "--results", str(args.results.resolve()), "--real-dir", str(real_dir), "--model", str(ws.model),
             "--replicas", ",".join(map(str, args.replicas)), "--systems", ",".join(args.systems),
             "--settings", ",".join(settings), "--adapters", str(args.adapters), "--requests", str(args.requests),
             "--concurrency", str(args.concurrency), "--max-tokens", str(args.max_tokens),
             "--prompt-len", str(args.prompt_len), "--slots", str(args.slots), "--host-cache", str(args.host_cache),
             "--kv-cache", args.kv_cache]
    ns = None
    if problem is None:
        ns = f"selora-fleet-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        child = ["ip", "netns", "exec", ns] + child + ["--shape"]
    print(f"fleet: Ray Serve LLM, dense twins (Ray's downloader) vs SeLoRA (selora_serve.ray), N={args.adapters}, "
          f"R={args.replicas}, settings {settings}" + ("" if ns else f" (no throttling: {problem})"), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        code = subprocess.run(child, env=env).returncode
    finally:
        if ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    records = [r for r in _done(args.results) if r["adapters"] == args.adapters and r["requests"] == args.requests]
    text, ratios = table(records)
    print(text)
    sizes = {"selora_bytes": sum(f.stat().st_size for f in (ws.store / "a0").iterdir()),
             "dense_bytes": sum(f.stat().st_size for f in (ws.dense / "a0").iterdir())}
    write_json(args.json, {"benchmark": "fleet", "hardware": hardware(["cpu"]), "sizes": sizes,
                           "link": {"throttled": ns is not None, "why_not": problem}, "targets": TARGETS,
                           "records": records, "ratios": ratios})
    if code != 0:
        raise SystemExit(f"fleet: the measuring process failed with {code} (finished runs are in {args.results})")


if __name__ == "__main__":
    main()
