"""Cold loads from object storage: a SeLoRA adapter against its dense PEFT twin, both fetched from
an S3 bucket, on an unthrottled and a throttled link.

The bucket is moto's S3 server (`selora_serve.store.s3local`) on 127.0.0.1 inside a network namespace
this benchmark makes (`ip netns`, needs root); the link is throttled for real with `tc`: an HTB
class on the namespace's loopback at the given rate, which a u32 filter applies to the packets
leaving the S3 server's port, so only the bytes the server sends (the objects fetched) are
limited. Everything else (uploads, the client's requests to selora-serve) is not. Settings:
unthrottled (moto's own ceiling on this machine, measured and printed), 8000 mbit (1 GB/s) and
800 mbit (100 MB/s). The effective rate of each setting is reported (bytes / fetch time).

Two parts, each timing SeLoRA and dense alternately (A B B A), cold every time:

  llama8b  LLaMA-3-8B-shaped adapter (r = 32 on q, k, v, up, down, eta = 0.6, haar, fp32;
           `benchmarks/decode.py`'s shapes), no engine: LIST + fetch into an empty adapter cache
           (`store.s3.cached_copy`), then the server's API-process snapshot (SeLoRA: validated in
           the same pass), then the worker's parse + decode (SeLoRA: `dense_state_dict`) or load
           of the dense safetensors file. Total = what the two systems pay before vLLM builds
           its LoRAModel from the tensors (the same for both).
  real     the real model (SmolLM2-135M-Instruct, exported into the work directory, or --model; r =
           32 on q, k, v, up, down; adapters from `init_checkpoint --random-b` and their `to-peft`
           twins, as `benchmarks/serve.py` builds them), one `selora-serve --adapters s3://...`
           server serving both forms from the bucket: time to first token (streamed, 1 token) of a
           request naming a never-requested adapter, so it includes LIST, fetch, snapshot,
           verification, the engine's load (decode or dense load) and the prefill.

  python benchmarks/coldfetch.py [--parts llama8b,real] [--quick] [--json PATH]
  python benchmarks/coldfetch.py --store local     # the real-model part from a local store instead

Without root or `ip netns`/`tc`, only the unthrottled setting runs, on the host's loopback, and
the JSON says why. Ratios are SeLoRA over dense, medians over probes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.publish import publish  # noqa: E402
from benchmarks.decode import QUICK_LAYERS, hardware, load_dense, make_adapter  # noqa: E402
from benchmarks.serve import REAL_RANK, build_workspace, real_model  # noqa: E402
from benchmarks.serve_report import TARGETS  # noqa: E402

SETTINGS = {"unthrottled": None, "1GB/s": 8000, "100MB/s": 800}  # mbit on the wire
BUCKET = "bench"
FETCH_LOG = re.compile(r"fetched adapter (\S+) from \S+: (\d+) bytes in ([0-9.]+) ms")
SNAPSHOT_LOG = re.compile(r"snapshot of adapter (\S+) in ([0-9.]+) ms, verified in ([0-9.]+) ms")
DECODE_LOG = re.compile(r"decoded SeLoRA adapter \S*/(\S+)-[0-9a-f]{16} \(.*\) in ([0-9.]+) ms")


# ---------------------------------------------------------------- the link


def netns_problem() -> str | None:
    """None if this process can make a network namespace and shape its loopback; else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "ip or tc not installed"
    probe = f"selora-probe-{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"],
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns / tc htb failed: {getattr(exc, 'stderr', b'') or exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def shape(port: int, mbit: int | None) -> None:
    """(Inside the namespace) limit what leaves `port` on lo to `mbit`, or lift the limit."""
    rate = f"{mbit}mbit" if mbit else "100gbit"
    tc = ["tc"]
    if subprocess.run([*tc, "class", "show", "dev", "lo"], capture_output=True, text=True).stdout.strip() == "":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*tc, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"], check=True)
        subprocess.run([*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "100gbit"],
                       check=True, capture_output=True)
        subprocess.run([*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", rate,
                        "ceil", rate, "burst", "256k", "cburst", "256k"], check=True, capture_output=True)
        subprocess.run([*tc, "filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:", "prio", "1", "u32",
                        "match", "ip", "sport", str(port), "0xffff", "flowid", "1:20"], check=True)
        return
    subprocess.run([*tc, "class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", rate,
                    "ceil", rate, "burst", "256k", "cburst", "256k"], check=True, capture_output=True)


# ---------------------------------------------------------------- adapters


def quantise_in_place(checkpoint: Path, bits: int | None) -> None:
    """Replace the SeLoRA checkpoint at `checkpoint` by its `bits`-bit form (kept if it is already)."""
    from selora_serve.checkpoint import read_manifest
    from selora_serve.convert import quantize

    if bits is None or read_manifest(checkpoint).quantization is not None:
        return
    quantize(checkpoint, checkpoint.with_name(checkpoint.name + ".q"), bits=bits)
    shutil.rmtree(checkpoint)
    checkpoint.with_name(checkpoint.name + ".q").rename(checkpoint)


def llama8b_dir(root: Path, layers: int, bits: int | None) -> Path:
    return root / (f"llama8b-{layers}" + (f"-int{bits}" if bits else ""))


def llama8b_adapters(root: Path, layers: int, bits: int | None = None) -> tuple[Path, Path, object]:
    """A LLaMA-3-8B-shaped SeLoRA checkpoint (made for that config's fingerprint; `bits`: with
    quantised coefficients), its PEFT twin (of the dequantised adapter), and the config's BaseFacts."""
    from selora_serve.adapter import BaseModelInfo
    from selora_serve.base_model import LLAMA3_8B, BaseFacts, config_from_dict
    from selora_serve.checkpoint import save_checkpoint
    from selora_serve.convert import to_peft

    facts = BaseFacts.of(config_from_dict(dict(LLAMA3_8B, num_hidden_layers=layers)))
    selora, dense = llama8b_dir(root, layers, bits) / "selora", llama8b_dir(root, layers, bits) / "dense"
    if not selora.is_dir():
        adapter = make_adapter("haar", layers)
        save_checkpoint(replace(adapter, base=BaseModelInfo("llama3-8b-shaped", facts.fingerprint)), selora)
    quantise_in_place(selora, bits)
    if not dense.is_dir():
        to_peft(selora, dense)
    return selora, dense, facts


def real_name(bits: int | None) -> str:
    return "real" + (f"-int{bits}" if bits else "")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# ---------------------------------------------------------------- inside the namespace


def measure_llama8b(s3, facts, settings: dict, port: int | None, probes: int) -> dict:

    from selora_serve.checkpoint import load_checkpoint
    from selora_serve.peft_io import dense_state_dict
    from selora_serve.store.cache import AdapterCache
    from selora_serve.store.s3 import S3Root, cached_copy
    from selora_serve.store.snapshot import snapshot

    root = S3Root(f"s3://{BUCKET}/llama8b")
    out = {}
    for setting, mbit in settings.items():
        if port is not None:
            shape(port, mbit)
        times: dict[str, dict[str, list[float]]] = {"selora": {}, "dense": {}}
        nbytes = {}
        order = [k for _ in range(probes) for k in (("selora", "dense"), ("dense", "selora"))[_ % 2]]
        for kind in order:
            with tempfile.TemporaryDirectory(prefix="selora-coldfetch-") as tmp:
                cache = AdapterCache(Path(tmp) / "cache", 1 << 40)
                t = [time.perf_counter()]
                found = root.find(kind)
                t.append(time.perf_counter())
                with cached_copy(found, cache) as (local, fetched):
                    t.append(time.perf_counter())
                    snap = snapshot(local, Path(tmp) / "snaps", base=facts if kind == "selora" else None)
                t.append(time.perf_counter())
                if kind == "selora":
                    tensors = dense_state_dict(load_checkpoint(snap, base_config=facts, verify=False))
                else:
                    tensors = load_dense(str(snap / "adapter_model.safetensors"), "cpu")  # read, not mapped
                t.append(time.perf_counter())
                del tensors
                nbytes[kind] = fetched.nbytes
            for stage, (a, b) in zip(("list", "fetch", "snapshot", "decode_or_load"), zip(t, t[1:])):
                times[kind].setdefault(stage, []).append(1e3 * (b - a))
        p50 = {k: {s: round(statistics.median(v), 2) for s, v in st.items()} for k, st in times.items()}
        total = {k: round(sum(v.values()), 2) for k, v in p50.items()}
        rate = {k: round(nbytes[k] / (p50[k]["fetch"] / 1e3) / 1e6, 1) for k in p50}
        out[setting] = {"p50_ms": p50, "total_ms": total, "bytes": nbytes, "effective_MBps": rate,
                        "selora_over_dense": round(total["selora"] / total["dense"], 3)}
        print(f"  llama8b {setting:12s} selora {total['selora']:8.1f} ms  dense {total['dense']:8.1f} ms  "
              f"ratio {out[setting]['selora_over_dense']:.3f}  (fetch at {rate['dense']:.0f} MB/s)", flush=True)
    return out


def measure_real(store: str, env: dict, names: list[str], settings: dict, port: int | None, probes: int,
                 work: Path, model: Path, evict=None) -> dict:
    """Time to first token of never-requested adapters in one selora-serve over `store` (an
    s3:// URL or a directory holding selora-NAME and dense-NAME); `evict(adapter)` (local store)
    drops an adapter's files from the page cache before its request."""
    import asyncio

    from selora_serve.serve import launch

    cache = work / "server-cache"
    shutil.rmtree(cache, ignore_errors=True)
    args = ["--model", str(model), "--adapters", store, "--served-model-name", "base", "--max-loras", "2",
            "--max-cpu-loras", "4", "--max-lora-rank", "32", "--kv-cache-memory-bytes", "512M",
            "--max-model-len", "512", "--enforce-eager", "--seed", "0"]
    if store.startswith("s3://"):
        args += ["--adapter-cache-dir", str(cache)]
    log = work / "selora-serve.log"
    server = launch.start(launch.selora_serve_command(args), log, env=env, name="selora-serve")
    out = {}
    try:
        async def ttft(client, model_name: str) -> float:
            start = time.perf_counter()
            stream = await client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=1,
                                                     temperature=0.0, stream=True)
            async for chunk in stream:
                if chunk.choices:
                    first = time.perf_counter()
                    break
            async for _ in stream:
                pass
            return first - start

        async def run_setting(batch: list[str]) -> dict[str, list[float]]:
            client = server.async_client()  # one per event loop
            await ttft(client, "base")  # untimed: the engine is awake
            got: dict[str, list[float]] = {"selora": [], "dense": []}
            for i, name in enumerate(batch):
                pair = ("selora", "dense") if i % 2 == 0 else ("dense", "selora")
                for kind in pair:
                    if evict is not None:
                        evict(f"{kind}-{name}")
                    got[kind].append(1e3 * await ttft(client, f"{kind}-{name}"))
            return got

        todo = iter(names)
        for setting, mbit in settings.items():
            if port is not None:
                shape(port, mbit)
            batch = [next(todo) for _ in range(probes)]
            got = asyncio.run(run_setting(batch))
            text = log.read_text()
            stages = {"fetch": {m[0]: float(m[2]) for m in FETCH_LOG.findall(text)},
                      "snapshot": {m[0]: float(m[1]) for m in SNAPSHOT_LOG.findall(text)},
                      "verify": {m[0]: float(m[2]) for m in SNAPSHOT_LOG.findall(text)},
                      "decode": {m[0]: float(m[1]) for m in DECODE_LOG.findall(text)}}
            p50 = {k: round(statistics.median(v), 1) for k, v in got.items()}
            out[setting] = {
                "ttft_ms": {k: [round(x, 1) for x in v] for k, v in got.items()}, "ttft_p50_ms": p50,
                "selora_over_dense": round(p50["selora"] / p50["dense"], 3),
                # from the server's log: where a cold load's time went (p50 over the same probes)
                "stage_p50_ms": {k: {stage: round(statistics.median(vals), 1) for stage, by_name in stages.items()
                                     if (vals := [by_name[f"{k}-{n}"] for n in batch if f"{k}-{n}" in by_name])}
                                 for k in got},
            }
            print(f"  real    {setting:12s} selora {p50['selora']:8.1f} ms  dense {p50['dense']:8.1f} ms  "
                  f"ratio {out[setting]['selora_over_dense']:.3f}  (stages {out[setting]['stage_p50_ms']})",
                  flush=True)
    finally:
        launch.stop(server)
    return out


def inside(args) -> dict:
    """Start the S3 server, fill the bucket, measure; runs in the namespace (or on the host)."""
    from selora_serve.store.s3local import S3Server, endpoint_env

    work = Path(args.work_dir)
    settings = {k: SETTINGS[k] for k in args.settings}
    if args.shape_port is not None:
        shape(args.shape_port, None)  # the namespace's loopback up, the shaping classes in place
    s3 = S3Server(port=args.port, log=work / "moto.log").start()
    os.environ.update(endpoint_env(s3.url))
    result = {}
    try:
        s3.create_bucket(BUCKET)
        if "llama8b" in args.parts:
            from selora_serve.base_model import LLAMA3_8B, BaseFacts, config_from_dict

            layers = QUICK_LAYERS if args.quick else LLAMA3_8B["num_hidden_layers"]
            base = llama8b_dir(work, layers, args.bits)
            s3.upload_dir(BUCKET, "llama8b/selora", base / "selora")
            s3.upload_dir(BUCKET, "llama8b/dense", base / "dense")
            facts = BaseFacts.of(config_from_dict(dict(LLAMA3_8B, num_hidden_layers=layers)))
            result["llama8b"] = measure_llama8b(s3, facts, settings, args.shape_port, args.probes)
        if "real" in args.parts:
            ws = Path(args.real_dir)
            names = sorted(p.name for p in (ws / "selora").iterdir())
            for name in names:
                s3.upload_dir(BUCKET, f"real/selora-{name}", ws / "selora" / name)
                s3.upload_dir(BUCKET, f"real/dense-{name}", ws / "dense" / name)
            result["real"] = measure_real(f"s3://{BUCKET}/real", endpoint_env(s3.url), names, settings,
                                          args.shape_port, args.probes, work, Path(args.model))
    finally:
        s3.stop()
    return result


# ---------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", choices=("s3", "local"), default="s3",
                   help="s3: both parts from a bucket (default); local: the real-model part only, from a local "
                        "store with the page cache dropped before each request")
    p.add_argument("--parts", default="llama8b,real", help="comma-separated: llama8b, real (default: %(default)s)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated link settings (default: %(default)s)")
    p.add_argument("--probes", type=int, default=None, help="A B pairs per setting (default: 4, or 2 with --quick)")
    p.add_argument("--model", type=Path,
                   help="the real model directory (default: SmolLM2-135M-Instruct, exported into the work directory)")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized: 2 LLaMA layers, the tiny local model for the 'real' part, 2 probes")
    p.add_argument("--bits", type=int, choices=(8, 4), default=None,
                   help="store the SeLoRA checkpoints with 8- or 4-bit coefficients (default: float32); the dense "
                        "twins stay float32 PEFT files of the same shapes")
    p.add_argument("--work-dir", type=Path, help="keep the adapters here (default: a temporary directory)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH, atomically")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw the results as bars into PNG")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--shape-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--real-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    args.settings = [x for x in args.settings.split(",") if x]
    bad = [x for x in args.parts if x not in ("llama8b", "real")] + [x for x in args.settings if x not in SETTINGS]
    if bad:
        p.error(f"unknown part or setting: {', '.join(bad)}")
    args.probes = args.probes or (2 if args.quick else 4)
    if args.probes < 1:
        p.error("--probes must be at least 1")
    if args.inside:
        print(json.dumps(inside(args)))
        return

    tmp = tempfile.mkdtemp(prefix="selora-bench-coldfetch-")
    work = args.work_dir or Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    try:
        doc = run(args, work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    publish(doc, json_path=args.json, plot=plot, plot_path=args.plot)


def plot(doc: dict, path: Path) -> None:
    """Bars per link setting: SeLoRA and dense cold-load totals (llama8b) and first-token times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(part, "total_ms" if part == "llama8b" else "ttft_p50_ms") for part in doc["results"]]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 3.8), squeeze=False)
    for ax, (part, key) in zip(axes[0], parts):
        settings = list(doc["results"][part])
        for j, kind in enumerate(("selora", "dense")):
            ax.bar([i + 0.4 * j for i in range(len(settings))], [doc["results"][part][s][key][kind] for s in settings],
                   width=0.4, label={"selora": "SeLoRA", "dense": "dense PEFT twin"}[kind])
        for i, s in enumerate(settings):
            ax.text(i + 0.2, max(doc["results"][part][s][key].values()) * 1.02,
                    f"{doc['results'][part][s]['selora_over_dense']:.2f}x", ha="center", fontsize=9)
        ax.set_xticks([i + 0.2 for i in range(len(settings))], settings)
        ax.set_ylabel("ms (p50)")
        ax.set_title({"llama8b": "LLaMA-3-8B shapes: LIST + fetch + snapshot + decode/load",
                      "real": "SmolLM2-135M: cold time to first token"}[part], fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run_local(args, work: Path) -> dict:
    """`--store local`: the real-model part from a local store, page cache dropped before each
    request (issue 12's target: cold first token of SeLoRA vs its dense twin in one server)."""
    try:
        from benchmarks import pagecache
    except ImportError:
        import pagecache

    from selora_serve.tiny import TinySpec

    names = [f"a{i}" for i in range(args.probes)]
    ws = build_workspace(work / real_name(args.bits), TinySpec(), 8 if args.quick else REAL_RANK, 0.6, names, seed=0,
                         model=None if args.quick else args.model or real_model(work))
    for name in names:
        quantise_in_place(ws.store / name, args.bits)
    store = work / ("local-store" + (f"-int{args.bits}" if args.bits else ""))
    for name in names:
        for kind, src in (("selora", ws.store), ("dense", ws.dense)):
            if not (store / f"{kind}-{name}").is_dir():
                shutil.copytree(src / name, store / f"{kind}-{name}")
    print(f"cold first token from a local store (page cache dropped before each request); p50 of {args.probes} "
          "A-B pairs:", flush=True)
    results = {"real": measure_real(str(store), {}, names, {"local": None}, None, args.probes, work, ws.model,
                                    evict=lambda adapter: pagecache.evict([store / adapter]))}
    return {"benchmark": "coldfetch", "store": "local", "hardware": hardware(["cpu"]),
            "config": {"quick": args.quick, "probes": args.probes, "eta": 0.6, "targets": list(TARGETS), "basis": "haar",
                       "bits": args.bits},
            "sizes": {"real": {"selora_bytes": dir_bytes(store / f"selora-{names[0]}"),
                               "dense_bytes": dir_bytes(store / f"dense-{names[0]}"), "model": str(ws.model)}},
            "results": results}


def run(args, work: Path) -> dict:
    if args.store == "local":
        return run_local(args, work)
    from selora_serve.base_model import LLAMA3_8B

    problem = netns_problem()
    settings = args.settings if problem is None else [s for s in args.settings if SETTINGS[s] is None]
    layers = QUICK_LAYERS if args.quick else LLAMA3_8B["num_hidden_layers"]
    sizes = {}
    if "llama8b" in args.parts:
        selora, dense, _ = llama8b_adapters(work, layers, args.bits)
        sizes["llama8b"] = {"selora_bytes": dir_bytes(selora), "dense_bytes": dir_bytes(dense), "layers": layers}
    real_dir, model = work / real_name(args.bits), args.model
    if "real" in args.parts:
        from selora_serve.tiny import TinySpec

        names = [f"a{i}" for i in range(args.probes * len(settings))]
        ws = build_workspace(real_dir, TinySpec(), 8 if args.quick else REAL_RANK, 0.6, names, seed=0,
                             model=None if args.quick else model or real_model(work))
        for name in names:
            quantise_in_place(ws.store / name, args.bits)
        model = ws.model
        sizes["real"] = {"selora_bytes": dir_bytes(ws.store / names[0]), "dense_bytes": dir_bytes(ws.dense / names[0]),
                         "model": str(model), "rank": 8 if args.quick else REAL_RANK}
    from selora_serve.serve.launch import free_port

    port = free_port()
    child = [sys.executable, str(Path(__file__).resolve()), "--inside", "--port", str(port), "--work-dir", str(work),
             "--parts", ",".join(args.parts), "--settings", ",".join(settings), "--probes", str(args.probes),
             "--real-dir", str(real_dir)] + (["--model", str(model)] if model else []) + (["--quick"] if args.quick else []) \
        + (["--bits", str(args.bits)] if args.bits else [])
    ns = None
    if problem is None:
        ns = f"selora-bench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        child = ["ip", "netns", "exec", ns] + child + ["--shape-port", str(port)]
    print(f"cold load from object storage (moto S3 on loopback{'' if ns else ', unthrottled only: ' + str(problem)}"
          f"; {'tc htb on the namespace loopback, S3 responses only' if ns else 'no throttling'}); "
          f"p50 of {args.probes} A-B pairs per setting:", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(child, stdout=subprocess.PIPE, text=True, env=env)
    finally:
        if ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines[:-1]:
        print(line)
    if proc.returncode != 0:
        raise SystemExit(f"coldfetch: the measuring process failed with {proc.returncode}")
    results = json.loads(lines[-1])
    return {"benchmark": "coldfetch", "hardware": hardware(["cpu"]),
            "link": {"throttle": "tc htb, netns loopback, S3 server's port" if ns else None, "why_not": problem,
                     "settings_mbit": {s: SETTINGS[s] for s in settings}},
            "config": {"quick": args.quick, "probes": args.probes, "eta": 0.6, "targets": list(TARGETS), "basis": "haar",
                       "bits": args.bits},
            "sizes": sizes, "results": results}


if __name__ == "__main__":
    main()
