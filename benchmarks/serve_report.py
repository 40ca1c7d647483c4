"""The serving benchmark's output: the table it prints and its PNG plots (see benchmarks/serve.py)."""

from __future__ import annotations

from pathlib import Path

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")  # the adapted modules
POPULARITY = ("uniform", "zipf")  # the traces' adapter popularities


def print_table(doc: dict) -> None:
    hw, cfg, sizes = doc["hardware"], doc["config"], doc["adapter"]
    print(f"hardware: {hw['cpu']}, {hw['cpu_count']} cores, torch {hw['torch']}" + (f", {hw['gpu']}" if "gpu" in hw else ""))
    print(f"model: {cfg['model_desc']}; adapters r={cfg['rank']} on {','.join(TARGETS)}, eta={cfg['eta']}, "
          f"{cfg['dtype']}; slots {cfg['slots']}, host cache {cfg['host_cache']}, max-num-seqs {cfg['max_num_seqs']}")
    print(f"trace: {cfg['requests']} requests per N, popularity and round, {cfg.get('rounds', 1)} round(s), "
          f"prompt {cfg['prompt_len']} + output "
          f"{cfg['output_len']} tokens, concurrency {cfg['concurrency']}; cold/warm: {cfg['probes']} sequential requests")
    print(f"per adapter: selora {sizes['selora_disk_bytes'] / 1024:.0f} KiB on disk, dense twin "
          f"{sizes['dense_disk_bytes'] / 1024:.0f} KiB ({sizes['dense_tensor_bytes'] / 1024:.0f} KiB of tensors)")
    form = cfg.get("host_cache_form", "dense")
    for system, m in doc["memory"].items():
        exact = m.get("cache_bytes_per_adapter")
        print(f"host memory per cached adapter, {system}: {m['host_bytes_per_adapter'] / 1024:.0f} KiB "
              f"(RSS delta over {m['cached_adapters']} adapters; API server {m['api_bytes_per_adapter'] / 1024:.0f}, "
              f"engine {m['engine_bytes_per_adapter'] / 1024:.0f}); cache holds "
              + (f"{exact / 1024:.0f} KiB ({form} form)" if exact else
                 f"{sizes['dense_tensor_bytes'] / 1024:.0f} KiB (dense tensors)"))
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
    print(f"\nselora ({form} host cache) / dense (throughput: median over rounds of the per-round ratio, the lower "
          "of the two traces; host RSS: measured, cache bytes: exact; decodes: selora worker decodes per N, p50 ms):")
    print(" ".join(f"{h:>12}" for h in ("N", "throughput", "cold TTFT", "warm TTFT", "disk bytes", "host RSS",
                                         "cache bytes", "decodes", "decode ms")))
    for rec in doc["records"]:
        cells = (rec["n_adapters"], rec["throughput_ratio"], rec["cold_ttft_ratio"], rec["warm_ttft_ratio"],
                 rec["bytes_ratio"], rec["host_memory_ratio"], rec.get("cache_bytes_ratio"), rec["selora"]["decodes"],
                 rec["selora"]["decode_ms_p50"])
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
