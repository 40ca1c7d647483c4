"""Decode time of a SeLoRA adapter against loading the same adapter as dense LoRA.

For each basis, builds an adapter of a model's shapes (`--shapes`: LLaMA-3-8B or SmolLM2-135M; r=32 on q,k,v,up,down, eta=0.6, random
coefficients via `init_adapter(random_b=True)`), writes it as a dense PEFT LoRA safetensors file
in a temporary directory, reads that file once (page cache warm), then times:

  decode      the serving decode, `packed.materialise_packed` of the adapter as a server holds it
              (one stack per layout; with --bits 8/4 its quantised values and scales, dequantised
              inside the decode): coefficients -> dense (A, B) for every module (median). On CPU
              the compiled path (`spectral.fused`), on CUDA torch's (dequantise, then decode)
  cold        the first decode, with Omega and every decoding table built from scratch
  dense_load  safetensors.torch.load_file of the dense file, from the page cache, reading
              every byte (its default mmap backend would return lazy views that cost nothing
              until first touched)
  copy        clone of one contiguous tensor holding the whole dense adapter: the memory
              bandwidth floor (a fresh allocation, as decode's output is)

Allocator state: glibc grows its mmap threshold (to at most 32 MiB) as large blocks are freed;
until then each large output is a fresh mapping that faults on every page (measured: 11 ms
instead of 3.5 for the same SmolLM2 decode). A serving process is past that point (loading the
model frees far larger blocks), so the benchmark first allocates and frees one 31 MiB block, and
the first measurement is not charged the difference.

Prints a table that states the hardware, then, as its very last line, one JSON document.
Run from the repository root:  PYTHONPATH=. python benchmarks/decode.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from selora_serve.adapter import BaseModelInfo, SpectralAdapter, init_adapter
from selora_serve.checkpoint import load_packed, save_checkpoint
from selora_serve.checkpoint.quant import QuantSpec
from selora_serve.packed import materialise_packed, pack
from selora_serve.atomic import write_json
from selora_serve.base_model import LLAMA3_8B, SMOLLM2_135M, config_from_dict, target_shapes
from selora_serve.config import SeLoRAConfig
from selora_serve.peft_io import DTYPES, PEFT_WEIGHTS, write_peft
from selora_serve.spectral.materialise import clear_caches

QUICK_LAYERS = 2
SHAPES = {"llama3-8b": ("LLaMA-3-8B", LLAMA3_8B), "smollm2-135m": ("SmolLM2-135M", SMOLLM2_135M)}


def hardware(devices: list[str]) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    if "cuda" in devices:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def make_adapter(basis: str, layers: int, shapes: str = "llama3-8b") -> SpectralAdapter:
    """The model's shapes (all of its layers unless `layers` is smaller), random A and B."""
    model = config_from_dict(dict(SHAPES[shapes][1], num_hidden_layers=layers))
    if basis == "fourier":
        config = SeLoRAConfig(basis="fourier", wavelet=None)
    else:
        config = SeLoRAConfig(basis="wavelet", wavelet=basis)
    targets = target_shapes(model, config.target_modules)
    return init_adapter(config, BaseModelInfo(f"{shapes}-shaped", "benchmark"), targets, random_b=True)


def load_dense(path: str, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=device, backend="pread")
    except TypeError:  # safetensors < 0.8 has no backend choice
        return load_file(path, device=device)


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """(milliseconds, result) of one call, synchronising the device around it."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3, result


def median_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median over `repeats` calls after one untimed call (steady state: warm allocator)."""
    fn()
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def bench_one(basis: str, device: str, dtype: str, layers: int, repeats: int, tmp: Path,
              shapes: str = "llama3-8b", bits_list: tuple[int | None, ...] = (None,)) -> list[dict]:
    """One record per entry of `bits_list` (None: unquantised coefficients)."""
    adapter = make_adapter(basis, layers, shapes)
    torch_dtype = DTYPES[dtype]
    peft_dir = write_peft(adapter, tmp / f"{basis}-{dtype}", dtype=dtype)
    weights = str(peft_dir / PEFT_WEIGHTS)
    load_dense(weights, "cpu")  # warm the page cache: dense_load is then a memory-to-memory cost
    records = []
    copy_ms = dense_load_ms = None
    for bits in bits_list:
        if bits is None:
            packed = pack(adapter)
        else:
            packed = load_packed(save_checkpoint(adapter, tmp / f"{basis}-int{bits}", quantization=QuantSpec(bits)))

        def decode() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
            return materialise_packed(packed, dtype=torch_dtype, device=device)

        clear_caches()
        cold_ms, dense = timed(decode, device)
        decode_ms = median_ms(decode, device, repeats)
        flat = torch.cat([m.flatten() for pair in dense.values() for m in pair])
        if copy_ms is None:  # the same dense adapter whatever the bits
            copy_ms = median_ms(flat.clone, device, repeats)
            dense_load_ms = median_ms(lambda: load_dense(weights, device), device, repeats)
        records.append({
            "basis": basis,
            "shapes": shapes,
            "bits": bits,
            "threads": torch.get_num_threads(),
            "device": device,
            "dtype": dtype,
            "n_matrices": 2 * len(adapter.modules),
            "dense_entries": flat.numel(),
            "dense_bytes": flat.numel() * flat.element_size(),
            "coef_bytes": packed.nbytes,
            "decode_ms": round(decode_ms, 2),
            "cold_decode_ms": round(cold_ms, 2),
            "copy_ms": round(copy_ms, 2),
            "dense_load_ms": round(dense_load_ms, 2),
            "ratio_copy": round(decode_ms / copy_ms, 2),
            "ratio_load": round(decode_ms / dense_load_ms, 2),
        })
    return records


def print_table(records: list[dict], info: dict, layers: int, shapes: str = "llama3-8b") -> None:
    print(f"hardware: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']} "
          f"({info['torch_threads']} threads)" + (f", {info['gpu']}" if "gpu" in info else ""))
    first = records[0]
    print(f"adapter: {SHAPES[shapes][0]} shapes, {layers} layers, r=32 on q,k,v,up,down, eta=0.6: "
          f"{first['n_matrices']} matrices, {first['dense_entries'] / 1e6:.1f}M dense entries "
          f"({first['dense_bytes'] / 2**20:.0f} MiB {first['dtype']}), "
          f"coefficients {first['coef_bytes'] / 2**20:.0f} MiB unquantised")
    header = ("basis", "bits", "device", "dtype", "decode ms", "cold ms", "copy ms", "load ms",
              "dec/copy", "dec/load")
    print(" ".join(f"{h:>9}" for h in header))
    for r in records:
        cells = (r["basis"], r["bits"] or "float", r["device"], r["dtype"], r["decode_ms"], r["cold_decode_ms"],
                 r["copy_ms"], r["dense_load_ms"], r["ratio_copy"], r["ratio_load"])
        print(" ".join(f"{c:>9.1f}" if isinstance(c, float) else f"{c:>9}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bases", default="haar,db4,fourier",
                        help="comma-separated: 'fourier' or pywt wavelet names (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed repeats per measurement; the median is reported (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="cpu",
                        help="'all' = cpu, plus cuda when available (default: %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the dense matrices and file; decoding computes in float32")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice, usually one per core)")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write the records (a JSON list) to PATH, atomically")
    parser.add_argument("--shapes", choices=tuple(SHAPES), default="llama3-8b",
                        help="whose matrix shapes: llama3-8b (few large matrices) or smollm2-135m (the real "
                             "model: 150 small ones, where per-matrix overheads show) (default: %(default)s)")
    parser.add_argument("--bits", default="none,8,4",
                        help="stored coefficient forms to decode: none (float32), 8, 4 (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_LAYERS} layers of the same shapes, 2 repeats")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    layers = QUICK_LAYERS if args.quick else SHAPES[args.shapes][1]["num_hidden_layers"]
    repeats = 2 if args.quick else max(1, args.repeats)
    bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    try:
        bits_list = tuple(None if b.strip() == "none" else int(b) for b in args.bits.split(",") if b.strip())
        for bits in bits_list:
            if bits is not None:
                QuantSpec(bits)
    except ValueError as exc:
        parser.error(f"--bits {args.bits}: {exc} (expected a comma-separated list of none, 8, 4)")

    torch.empty(31 << 18)  # 31 MiB (under glibc's 32 MiB cap), freed at once: a serving process' allocator
    with tempfile.TemporaryDirectory(prefix="selora-bench-") as tmp:
        records = [r for d in devices for b in bases
                   for r in bench_one(b, d, args.dtype, layers, repeats, Path(tmp), args.shapes, bits_list)]
    info = hardware(devices)
    print_table(records, info, layers, args.shapes)
    if args.json:
        write_json(args.json, records)
    print(json.dumps({"benchmark": "decode", "hardware": info, "shapes": args.shapes, "layers": layers,
                      "results": records}))


if __name__ == "__main__":
    main()
