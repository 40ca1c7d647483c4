"""Where a cold adapter load's time goes: selora-serve's stages against vLLM loading the dense twin.

In one process, with no server: for each of M adapters (the serving benchmark's, see
benchmarks/serve.py) whose files are first dropped from the page cache, time

  selora-serve   API process: the snapshot, validated in full in the same pass that copies it
                 (`store.snapshot(..., base=...)`: one read of the source, checks on the bytes in
                 memory, the copy and its verified mark written once); engine worker: parse
                 (`load_verified`), decode (`dense_state_dict`), vLLM's `LoRAModel.from_lora_tensors`;
  two-pass       the API-process stages as they were before (issue 12 item 3): copy the snapshot,
                 read it again to validate it (`store.validate`), then write the mark; timed on
                 the same adapters with the page cache dropped again, for a before/after table;
  dense LoRA     engine worker: vLLM's own `PEFTHelper.from_local_dir` and
                 `LoRAModel.from_local_checkpoint` on the dense PEFT twin;

and print the p50 of each stage (the first 3 adapters are a warm-up and not counted). The
difference of the selora-serve and dense totals is what a cold request pays for a SeLoRA adapter
before its first token, outside vLLM's shared costs (resolving, scheduling, activating into a slot,
the prefill). Presets: the serving benchmark's local models (tiny, small, medium) and `real`, the
real model (SmolLM2-135M-Instruct, exported into the work directory on first use) with r = 32 on
q, k, v, up, down.

  python benchmarks/coldload.py [--model-size small|real] [--adapters 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

try:
    from benchmarks import pagecache
    from benchmarks.decode import hardware
    from benchmarks.serve import PRESETS, REAL, REAL_RANK, build_workspace, preset, real_model
    from benchmarks.serve_report import TARGETS
except ImportError:
    import pagecache
    from decode import hardware
    from serve import PRESETS, REAL, REAL_RANK, build_workspace, preset, real_model
    from serve_report import TARGETS

from selora_serve.atomic import write_json

STAGES = {"selora": ("snapshot_verified", "parse", "decode", "build"), "two_pass": ("snapshot", "verify", "mark"),
          "dense": ("peft_config", "load")}
WARMUP = 3


def measure(ws, names: list[str], facts, max_position: int, vocab: int) -> dict[str, dict[str, list[float]]]:
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    from selora_serve.peft_io import dense_state_dict
    from selora_serve.vllm_ext import loading
    from selora_serve.store.snapshot import mark_verified, snapshot
    from selora_serve.store import AdapterStore
    from selora_serve.store.verify import validate

    loading.install()  # PEFTHelper.from_local_dir reads SeLoRA manifests, as in the server
    store = AdapterStore([ws.store])
    expected = set(TARGETS)
    times = {system: {stage: [] for stage in stages} for system, stages in STAGES.items()}
    with tempfile.TemporaryDirectory(prefix="selora-coldload-") as snaps:
        for i, name in enumerate(names):
            pagecache.evict([ws.store / name, ws.dense / name])
            t = [time.perf_counter()]
            path = snapshot(store.find(name), Path(snaps) / "one-pass", base=facts)
            t.append(time.perf_counter())
            helper = PEFTHelper.from_local_dir(str(path), max_position)
            adapter, verified = loading.load_verified(str(path), facts, expected)
            assert verified, "the one-pass snapshot is marked verified"
            t.append(time.perf_counter())
            tensors = dense_state_dict(adapter)
            t.append(time.perf_counter())
            LoRAModel.from_lora_tensors(lora_model_id=i + 1, tensors=tensors, peft_helper=helper, device="cpu",
                                        dtype=torch.float32, model_vocab_size=vocab)
            t.append(time.perf_counter())
            pagecache.evict([ws.store / name])
            t.append(time.perf_counter())  # not a stage: the eviction between the two forms
            path = snapshot(store.find(name), Path(snaps) / "two-pass")
            t.append(time.perf_counter())
            validate(name, path, facts)
            t.append(time.perf_counter())
            mark_verified(path, facts.fingerprint)
            t.append(time.perf_counter())
            helper = PEFTHelper.from_local_dir(str(ws.dense / name), max_position)
            t.append(time.perf_counter())
            LoRAModel.from_local_checkpoint(str(ws.dense / name), sorted(expected), helper, lora_model_id=i + 1,
                                            device="cpu", dtype=torch.float32, model_vocab_size=vocab)
            t.append(time.perf_counter())
            if i < WARMUP:
                continue
            steps = [1e3 * (b - a) for a, b in zip(t, t[1:])]
            del steps[4]  # the eviction
            it = iter(steps)  # the stages, in STAGES order
            for system, stages in STAGES.items():
                for stage in stages:
                    times[system][stage].append(next(it))
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", choices=sorted(PRESETS) + [REAL], default="small",
                   help="the serving benchmark's model preset; real: SmolLM2-135M-Instruct with r="
                        f"{REAL_RANK}, exported into the work directory (default: %(default)s)")
    p.add_argument("--adapters", type=int, default=40, help=f"cold loads timed, plus {WARMUP} warm-up (default: %(default)s)")
    p.add_argument("--eta", type=float, default=0.6, help="SeLoRA spectral density (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, help="keep the model and adapters here (default: a temporary directory)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH, atomically")
    args = p.parse_args(argv)
    if args.adapters < 1:
        p.error("--adapters must be at least 1")
    real = args.model_size == REAL
    spec, rank = preset(args.model_size)
    names = [f"cold-{j}" for j in range(args.adapters + WARMUP)]
    with tempfile.TemporaryDirectory(prefix="selora-bench-coldload-") as tmp:
        root = args.work_dir / f"{args.model_size}-r{rank}-eta{args.eta}" if args.work_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ws = build_workspace(root, spec, rank, args.eta, names, seed=0, model=real_model(root) if real else None)
        from transformers import AutoConfig

        from selora_serve.base_model import BaseFacts

        hf = AutoConfig.from_pretrained(str(ws.model))
        times = measure(ws, names, BaseFacts.of(hf), hf.max_position_embeddings, hf.vocab_size)
    p50 = {system: {stage: round(statistics.median(v), 3) for stage, v in stages.items()} for system, stages in times.items()}
    totals = {system: round(sum(stages.values()), 3) for system, stages in p50.items()}
    worker = sum(p50["selora"][s] for s in ("parse", "decode", "build"))
    doc = {"benchmark": "coldload", "hardware": hardware(["cpu"]),
           "config": {"model_size": args.model_size, "rank": rank, "eta": args.eta, "adapters": args.adapters,
                      "model": str(ws.model)},
           "p50_ms": p50, "total_ms": totals, "selora_over_dense": round(totals["selora"] / totals["dense"], 3),
           "two_pass_total_ms": round(totals["two_pass"] + worker, 3),
           "api_one_pass_over_two_pass": round(p50["selora"]["snapshot_verified"] / totals["two_pass"], 3)}
    print(f"cold adapter load, p50 ms over {args.adapters} adapters ('{args.model_size}' preset, r={rank}, "
          f"eta={args.eta}; files dropped from the page cache before each):")
    for system, stages in p50.items():
        print(f"  {system:8s} " + "  ".join(f"{s} {v:.2f}" for s, v in stages.items()) + f"  = {totals[system]:.2f}")
    print(f"  API process, one pass / two passes: {doc['api_one_pass_over_two_pass']}; "
          f"selora / dense: {doc['selora_over_dense']} (two passes: "
          f"{round(doc['two_pass_total_ms'] / totals['dense'], 3)})")
    if args.json:
        write_json(args.json, doc)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
