"""selora-serve: vLLM's OpenAI-compatible server, serving SeLoRA adapters from a store.

Parsing and launching only: `plan` decides the vLLM options, vLLM's own launcher serves.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

DESCRIPTION = """\
Serve a base model and a store of SeLoRA adapters with vLLM's OpenAI-compatible server
(completions, chat completions, streaming, /v1/models, /metrics).

Each sub-directory of an --adapters directory (or sub-prefix of an s3:// one) is an adapter,
requested by its name as the "model" of a request; it is decoded from its spectral
coefficients on its first request, checked against the served base model, and then cached by
vLLM (--max-loras slots, --max-cpu-loras in host memory). Adapters copied into the store while
the server runs are served without a restart; adapters in a bucket are fetched on their first
request into a local cache (--adapter-cache-dir, --adapter-cache-bytes).

Every option not listed here goes to vLLM unchanged (see `python -m
vllm.entrypoints.openai.api_server --help`), e.g. --tensor-parallel-size, --max-model-len.
"""

EPILOG = """\
examples:
  selora-serve --demo                                  # SmolLM2-135M-Instruct + 3 trained adapters, :8000
  selora-serve --model meta-llama/Meta-Llama-3-8B --adapters /srv/adapters --port 8000
  selora-serve --model ./llama --adapters ./a --adapters ./b --max-loras 8 --tensor-parallel-size 2
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 selora-serve --model ./llama --adapters s3://adapters/prod
  selora-serve --merge ./ckpt --model ./llama          # one adapter merged into W0, LoRA off
"""


def build_parser() -> argparse.ArgumentParser:
    from selora_serve import __version__
    from selora_serve.serve.demo import DEMO_MODELS
    from selora_serve.vllm_ext.host_cache import HOST_CACHE_FORMS

    parser = argparse.ArgumentParser(
        prog="selora-serve", description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--model", metavar="BASE", help="base model: local directory or Hugging Face id")
    parser.add_argument("--adapters", action="append", default=[], metavar="DIR|s3://BUCKET/PREFIX",
                        help="adapter store: a directory, or a bucket prefix in S3 or an S3-compatible store (MinIO, "
                        "Ceph; endpoint and credentials from the standard AWS_* environment, AWS_ENDPOINT_URL "
                        "included). Repeatable; the first that holds a name wins")
    parser.add_argument("--adapter-cache-dir", metavar="DIR", default=None,
                        help="where adapters fetched from object storage are kept, across restarts and shared by "
                        "every process of the server (default: ~/.cache/selora-serve/adapters)")
    parser.add_argument("--adapter-cache-bytes", metavar="SIZE", default=None,
                        help="bound on that cache, least recently used adapters evicted first: bytes or 20G, 512M "
                        "(default: 16G)")
    parser.add_argument("--pin", action="append", default=[], metavar="NAME",
                        help="load this store adapter at start-up and pin it in a slot (repeatable)")
    parser.add_argument("--merge", metavar="CKPT",
                        help="serve this one checkpoint merged into --model's weights, with LoRA disabled")
    parser.add_argument("--merge-cache", metavar="DIR", default=None,
                        help="where merged models are kept (default: ~/.cache/selora-serve/merged)")
    parser.add_argument("--host-cache-form", choices=HOST_CACHE_FORMS, default=None,
                        help="how adapters wait in vLLM's host cache (--max-cpu-loras): dense (default; vLLM's own "
                        "decoded A and B, activating one is a copy) or spectral (SeLoRA adapters keep only their "
                        "coefficients, about (1 - eta) of the bytes, and are decoded again each time they take a "
                        "LoRA slot: more adapters per GB of host memory, for a decode per activation)")
    parser.add_argument("--host-cache-bytes", metavar="SIZE", default=None,
                        help="bound vLLM's host cache in bytes instead of a count: as many adapters as fit in SIZE "
                        "(bytes, or 2G, 512M), least recently used evicted first, those in LoRA slots kept; with "
                        "--host-cache-form spectral an adapter costs its stored coefficients (int4: ~1/9 of dense "
                        "bf16), otherwise its dense A and B. --max-cpu-loras, if also given, still applies")
    parser.add_argument("--tenants", metavar="FILE",
                        help="tenants TOML file: API keys (sha256) and the adapters each tenant may use, plus the "
                        "admin key (see `python -m selora_serve.tenants --help`); replaces --api-key")
    parser.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                        help="largest request body accepted, in bytes (default 1 MiB; larger answers 413)")
    parser.add_argument("--demo", action="store_true",
                        help="serve SmolLM2-135M-Instruct (written from the `real` extra's GGUF file, no download) and "
                        "three SeLoRA adapters trained on it: demo-pirate (a persona), demo-terse (a style), "
                        "demo-extract (a task); the base model is `smollm2`. It has no API key, so it listens on "
                        "127.0.0.1 unless --host says otherwise")
    parser.add_argument("--demo-model", choices=DEMO_MODELS, default="smollm2",
                        help="with --demo: smollm2 (default) or tiny (a random 2-layer Llama with random adapters: "
                        "nothing to install, answers in fluent nonsense)")
    parser.add_argument("--demo-dir", metavar="DIR", default=None,
                        help="where --demo writes its model and adapters (default: ~/.cache/selora-serve/demo)")
    return parser


def plan_from_args(args: argparse.Namespace, passthrough: list[str]):
    from .plan import guard_settings, with_guard

    # The guard's options first: they are cheap to check, and _plan's model check imports vLLM.
    # (_plan adds no --api-key, so checking the user's options is checking the launch's.)
    guard = guard_settings(passthrough, args.tenants, args.max_body_bytes)
    return with_guard(_plan(args, passthrough), guard)


def _plan(args: argparse.Namespace, passthrough: list[str]):
    from .plan import default_cache, plan_merge, plan_store

    if args.demo:
        from .demo import build_demo, demo_options

        model, store = build_demo(args.demo_dir or default_cache() / "demo", args.demo_model)
        extra = []
        for flag, value in demo_options(args.demo_model):
            if flag not in {a.split("=", 1)[0] for a in passthrough}:
                extra += [flag] if value is None else [flag, value]
        return plan_store(str(model), [str(store)], extra + passthrough, pinned=args.pin,
                          host_cache_form=args.host_cache_form, host_cache_bytes=args.host_cache_bytes)
    if not args.model:
        raise ValueError("--model BASE is required (or use --demo)")
    if args.merge:
        if args.adapters or args.host_cache_form or args.host_cache_bytes:
            raise ValueError("--merge serves one merged adapter with LoRA disabled; it does not take --adapters, "
                             "--host-cache-form or --host-cache-bytes")
        return plan_merge(args.merge, args.model, passthrough, cache=args.merge_cache or default_cache() / "merged")
    if not args.adapters:
        raise ValueError("--adapters DIR is required (or --merge CKPT, or --demo)")
    return plan_store(args.model, args.adapters, passthrough, pinned=args.pin, host_cache_form=args.host_cache_form,
                      cache_dir=args.adapter_cache_dir, cache_bytes=args.adapter_cache_bytes,
                      host_cache_bytes=args.host_cache_bytes)


def launch(plan) -> None:
    """Run vLLM's OpenAI server in this process with `plan`'s argv and environment.

    Inside `store.checkout.snapshot_dir`: the private copies of loaded adapters go when the server does.
    The caller holds `metrics.multiprocess_dir` (see `main`).
    """
    from selora_serve.store.checkout import snapshot_dir

    os.environ.update(plan.env)
    sys.argv = ["selora-serve", *plan.argv]
    with snapshot_dir():
        from vllm.entrypoints.launchers.api_server.entry import main as vllm_main

        vllm_main()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    from selora_serve.errors import USER_ERRORS
    from selora_serve.vllm_ext.metrics import multiprocess_dir

    # The adapter metrics taken in the engine's worker reach the API server's /metrics only through
    # prometheus-client's multiprocess files, and prometheus-client picks its storage when first
    # imported: planning already imports vLLM (the model check asks its attention backend), so the
    # directory must be set before that.
    with multiprocess_dir():
        try:
            plan = plan_from_args(args, passthrough)
        except USER_ERRORS as exc:
            print(f"selora-serve: error: {exc}", file=sys.stderr)
            return 2
        for note in plan.notes:
            print(f"selora-serve: {note}", file=sys.stderr)
        launch(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
